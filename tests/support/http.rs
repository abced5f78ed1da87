//! A small HTTP/1.1 server on 127.0.0.1 for download tests: serves byte strings by path, honours
//! `Range: bytes=N-`, and can misbehave on purpose (cut the connection mid-file, ignore Range,
//! answer a resume with the wrong range). One connection at a time, `Connection: close`, bounded
//! timeouts; it stops when dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How a path is served.
#[derive(Clone, Debug)]
pub enum Behavior {
    Normal,
    /// The first `times` responses announce the full length but close after `after` bytes.
    Cut {
        times: usize,
        after: usize,
    },
    /// Range headers are ignored: always 200 with the whole body.
    IgnoreRange,
    /// Range requests are answered 206 with a range starting at 0.
    WrongRange,
}

/// One request the server saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub path: String,
    pub range_start: Option<u64>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, (Vec<u8>, Behavior)>,
    seen: Vec<Seen>,
}

pub struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    let _ = serve(c, &st);
                }
            }
        });
        Server {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT` + `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add(&self, path: &str, body: impl Into<Vec<u8>>) {
        self.add_with(path, body, Behavior::Normal);
    }

    pub fn add_with(&self, path: &str, body: impl Into<Vec<u8>>, b: Behavior) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), (body.into(), b));
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn clear_seen(&self) {
        self.state.lock().unwrap().seen.clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut range_start = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range:") {
            range_start = v
                .trim()
                .strip_prefix("bytes=")
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<u64>().ok());
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    let found = {
        let mut st = state.lock().unwrap();
        st.seen.push(Seen {
            path: path.clone(),
            range_start,
        });
        st.files.get_mut(&path).map(|(body, b)| {
            let now = b.clone();
            if let Behavior::Cut { times, .. } = b {
                *times -= 1;
                if *times == 0 {
                    *b = Behavior::Normal;
                }
            }
            (body.clone(), now)
        })
    };
    let mut out = stream;
    let Some((body, behavior)) = found else {
        let msg = b"not found\n";
        write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            msg.len()
        )?;
        return out.write_all(msg);
    };
    let len = body.len() as u64;
    let (status, start) = match (range_start, &behavior) {
        (Some(s), Behavior::Normal | Behavior::Cut { .. }) if s >= len => {
            write!(
                out,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
        (Some(s), Behavior::Normal | Behavior::Cut { .. }) => ("206 Partial Content", s),
        (Some(_), Behavior::WrongRange) => ("206 Partial Content", 0),
        _ => ("200 OK", 0),
    };
    let part = &body[start as usize..];
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n",
        part.len()
    );
    if status.starts_with("206") {
        head.push_str(&format!(
            "Content-Range: bytes {start}-{}/{len}\r\n",
            len.saturating_sub(1)
        ));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    match behavior {
        Behavior::Cut { after, .. } => {
            out.write_all(&part[..after.min(part.len())])?;
            out.flush()?;
            out.shutdown(std::net::Shutdown::Both)
        }
        _ => out.write_all(part),
    }
}
