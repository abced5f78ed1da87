//! The boot HTTP routes (axum + tower-http; no HTTP parsing of our own):
//!
//! * `GET /a/<name>`: an artifact, with Range (tower-http `ServeFile`) and a strong ETag (its
//!   SHA-256) answered 304 on `If-None-Match`;
//! * `GET /boot.ipxe?mac=…`: the node's iPXE script, minting its one-shot seed token; the
//!   configured answer for an unknown MAC; without `mac`, a chain that adds it;
//! * `GET /seed/<token>/<file>`: a NoCloud seed file, once per token, logged without content.
//!
//! Every request is logged with the client address and, once a MAC's script was served from that
//! address, with the node's name: the boot timeline of a machine.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use headers::{ETag, HeaderMapExt, IfNoneMatch};
use http_body::Frame;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::ipxe::{self, Unknown};
use crate::minter::Minter;
use crate::tokens::TOKEN_SLOT;
use crate::{Admission, Catalog, ClientIds, Mac, SeedFile};

/// HTTP settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The URL clients reach this server at, `http://ADDR:PORT` (no trailing `/`).
    pub base_url: String,
    pub unknown: Unknown,
}

struct AppState {
    catalog: Arc<dyn Catalog>,
    cfg: Config,
    /// Shared with the TFTP server (a Pi's cmdline.txt mints there).
    tokens: Arc<Minter>,
    /// Which node booted from which address, for the log.
    seen: Mutex<HashMap<IpAddr, String>>,
}

type St = State<Arc<AppState>>;

/// The router; serve it with `into_make_service_with_connect_info::<SocketAddr>()`. `tokens`
/// are the seed tokens it mints (boot scripts) and checks (seeds).
pub fn router(catalog: Arc<dyn Catalog>, cfg: Config, tokens: Arc<Minter>) -> Router {
    let state = Arc::new(AppState {
        catalog,
        tokens,
        cfg,
        seen: Mutex::default(),
    });
    Router::new()
        .route("/boot.ipxe", get(boot_script))
        .route("/a/{*name}", get(artifact))
        .route("/seed/{token}/{file}", get(seed))
        .fallback(not_found)
        .with_state(state)
}

impl AppState {
    fn who(&self, ip: IpAddr) -> String {
        self.seen
            .lock()
            .expect("lock")
            .get(&ip)
            .cloned()
            .unwrap_or_else(|| "-".into())
    }
}

async fn not_found(ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request) -> Response {
    tracing::info!(client = %peer.ip(), path = %req.uri().path(), "http: 404 no such route");
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

fn script(text: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct BootQuery {
    mac: Option<String>,
}

async fn boot_script(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<BootQuery>,
) -> Response {
    let ip = peer.ip();
    let Some(raw) = q.mac.filter(|m| !m.is_empty()) else {
        tracing::info!(client = %ip, "http: boot.ipxe without a MAC: answered the chain that adds it");
        return script(ipxe::chain_script(&st.cfg.base_url));
    };
    let mac: Mac = match raw.parse() {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(client = %ip, "http: boot.ipxe: {e}");
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    let ids = ClientIds {
        mac: Some(mac),
        ip: Some(ip),
        ..Default::default()
    };
    let boot = match st.catalog.admit(&ids) {
        Admission::Boot { boot, why } => {
            tracing::info!(client = %ip, %mac, node = %boot.node, "http: boot.ipxe: matched ({why})");
            boot
        }
        Admission::Refused { node, why } => {
            tracing::info!(client = %ip, %mac, %node, "http: 403 boot.ipxe refused: {why}");
            return forbidden(&node, &why);
        }
        Admission::Unknown(why) => {
            tracing::info!(client = %ip, %mac, answer = ?st.cfg.unknown, "http: boot.ipxe for an unknown machine: {why}");
            return script(ipxe::unknown_script(st.cfg.unknown, mac));
        }
    };
    // Tokens are as long as the slot, so a line that fits with it fits with the token: checked
    // before minting, which would end the node's older tokens for a script never served.
    let made = ipxe::kernel_cmdline(&st.cfg.base_url, &boot, TOKEN_SLOT).and_then(|_| {
        let token = st.tokens.mint(&boot.node);
        ipxe::node_script(&st.cfg.base_url, &boot, &token)
    });
    match made {
        Ok(text) => {
            st.seen.lock().expect("lock").insert(ip, boot.node.clone());
            tracing::info!(client = %ip, %mac, node = %boot.node, profile = %boot.profile, seed_valid_s = st.tokens.ttl().as_secs(), "http: boot script served; seed token minted");
            script(text)
        }
        Err(e) => {
            tracing::error!(client = %ip, %mac, node = %boot.node, "http: 500 boot.ipxe: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

/// The answer to a node its netboot policy refuses: iPXE's `chain` fails and the firmware
/// goes on to its next boot device.
fn forbidden(node: &str, why: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        format!("node {node} may not netboot now: {why}\n"),
    )
        .into_response()
}

async fn seed(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((token, file)): Path<(String, String)>,
) -> Response {
    let ip = peer.ip();
    let Some(f) = SeedFile::from_name(&file) else {
        tracing::info!(client = %ip, file = %file.escape_debug(), "http: 404 not a seed file");
        return StatusCode::NOT_FOUND.into_response();
    };
    let node = match st.tokens.take(&token, f) {
        Ok(n) => n,
        Err(_) if token == TOKEN_SLOT => {
            tracing::warn!(client = %ip, file = %f.name(), "http: 404 seed refused: the URL holds the built cmdline.txt's token slot, so the Raspberry Pi read its cmdline.txt from another TFTP server; only `imgbuild netboot serve`'s TFTP mints the token");
            return (StatusCode::NOT_FOUND, "not found\n").into_response();
        }
        Err(why) => {
            // The token itself is not logged: while it lives, it is a key to the seed.
            tracing::warn!(client = %ip, file = %f.name(), node = %st.who(ip), "http: 404 seed refused: {why}");
            return (StatusCode::NOT_FOUND, "not found\n").into_response();
        }
    };
    if let Err(why) = st.catalog.seed_allowed(&node) {
        tracing::info!(client = %ip, %node, file = %f.name(), "http: 403 seed refused: {why}");
        return forbidden(&node, &why);
    }
    let Some(body) = st.catalog.seed(&node, f) else {
        tracing::error!(client = %ip, %node, file = %f.name(), "http: the catalog has no seed for this node");
        return StatusCode::NOT_FOUND.into_response();
    };
    tracing::info!(client = %ip, %node, file = %f.name(), bytes = body.len(), "http: seed served (content not logged)");
    // user-data is the seed proper (what holds the node's secrets); cloud-init fetches it after
    // meta-data, and not every version asks for network-config.
    if f == SeedFile::UserData {
        st.catalog.seed_delivered(&node, ip);
    }
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn artifact(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    let ip = peer.ip();
    let ids = ClientIds {
        ip: Some(ip),
        ..Default::default()
    };
    if let Admission::Refused { node, why } = st.catalog.admit(&ids) {
        tracing::info!(client = %ip, %node, file = %name.escape_debug(), "http: 403 artifact refused: {why}");
        return forbidden(&node, &why);
    }
    let Some(a) = st.catalog.artifact(&name).cloned() else {
        tracing::info!(client = %ip, file = %name.escape_debug(), "http: 404 no such artifact");
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let etag: ETag = format!("\"{}\"", a.sha256)
        .parse()
        .expect("hex is a valid ETag");
    let node = st.who(ip);
    if let Some(inm) = req.headers().typed_get::<IfNoneMatch>()
        && !inm.precondition_passes(&etag)
    {
        tracing::info!(client = %ip, %node, file = %name, "http: 304 not modified");
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().typed_insert(etag);
        return r;
    }
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let resp = match ServeFile::new(&a.path).oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let (mut parts, body) = resp.into_parts();
    parts.headers.typed_insert(etag);
    parts
        .headers
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let status = parts.status;
    let expected = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    tracing::info!(client = %ip, %node, file = %name, status = status.as_u16(), range = range.as_deref().unwrap_or("-"), "http: artifact requested");
    let counted = Counted {
        inner: Body::new(body),
        bytes: 0,
        expected,
        start: Instant::now(),
        label: (ip, node, name),
    };
    Response::from_parts(parts, Body::new(counted))
}

/// A response body that logs, when dropped, how much of it reached the client and how fast.
struct Counted {
    inner: Body,
    bytes: u64,
    expected: Option<u64>,
    start: Instant,
    label: (IpAddr, String, String),
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            this.bytes += d.len() as u64;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let (ip, node, file) = &self.label;
        let secs = self.start.elapsed().as_secs_f64().max(1e-6);
        let rate = format!("{:.1} MiB/s", self.bytes as f64 / secs / 1048576.0);
        let ms = (secs * 1000.0) as u64;
        if self.expected.is_none_or(|e| e == self.bytes) {
            tracing::info!(client = %ip, %node, %file, bytes = self.bytes, ms, %rate, "http: sent");
        } else if self.bytes == 0 {
            // EDK2's HTTP Boot reads the headers for the size, drops the connection, then asks
            // again: normal, not a failed download.
            tracing::info!(client = %ip, %node, %file, of = self.expected, "http: the client read the headers only");
        } else {
            tracing::warn!(client = %ip, %node, %file, bytes = self.bytes, of = self.expected, ms, "http: the client stopped the download early");
        }
    }
}
