//! `imgbuild netboot serve`: TFTP and HTTP for the inventory's nodes until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use imgbuild_netboot::ipxe::Unknown;
use imgbuild_netboot::minter::Minter;
use imgbuild_netboot::tftp::{server as tftp, transfer::Limits};
use imgbuild_netboot::{Admission, Catalog, dhcp, http};
use tokio::sync::watch;

use super::Context;
use crate::netboot::catalog::{DefaultProfile, Lookup, NetbootCatalog, Summary};
use crate::netboot::options::render_seed;
use crate::netboot::state::StateDir;
use crate::netboot::{DhcpMode, Endpoint, neigh};
use crate::node::inventory::Node;

pub use crate::netboot::options::{ServeArgs as Args, UnknownArg};

pub fn run(args: &Args, ctx: &Context) -> Result<()> {
    let lookup = Lookup {
        state: StateDir::new(&args.state.state_dir),
        neighbours: Box::new(|ip| {
            neigh::mac_of(&std::fs::read_to_string("/proc/net/arp").ok()?, ip)
        }),
        default: default_profile(args, ctx)?,
    };
    let (catalog, summary) =
        NetbootCatalog::load(&args.nodes.inventory, &args.images, lookup, |node| {
            super::node_seed(&args.nodes, ctx, node)
        })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args, Arc::new(catalog), &summary))?;
    eprintln!("imgbuild netboot: stopped");
    Ok(())
}

async fn serve(args: &Args, pis: Arc<NetbootCatalog>, summary: &Summary) -> Result<()> {
    let e = &args.endpoint;
    let tftp_addr = SocketAddr::new(e.listen, e.tftp_port);
    let http_addr = SocketAddr::new(e.listen, e.http_port);
    let udp = tokio::net::UdpSocket::bind(tftp_addr)
        .await
        .map_err(|err| bind_error(err, "UDP", tftp_addr))?;
    let tcp = tokio::net::TcpListener::bind(http_addr)
        .await
        .map_err(|err| bind_error(err, "TCP", http_addr))?;
    // Port 0 (tests) means any free port: tell clients the one we got.
    let e = Endpoint {
        listen: e.listen,
        tftp_port: udp.local_addr()?.port(),
        http_port: tcp.local_addr()?.port(),
    };
    pis.check_pi_seed_server(&e.base_url())?;
    pis.check_cmdline_sizes(&e.base_url())?;
    let catalog: Arc<dyn Catalog> = pis;
    // One set of seed tokens: minted by a PC's boot script (HTTP) or a Pi's cmdline.txt (TFTP).
    let tokens = Arc::new(Minter::new(Duration::from_secs(args.seed_ttl)));
    // Bound before the "serving" line, which tells tests and users everything listens.
    let (stop_tx, stop_rx) = watch::channel(false);
    let dhcp_tasks = start_dhcp(args, &e, &catalog, &stop_rx)?;
    for (node, ids, profile, policy) in &summary.nodes {
        tracing::info!(%node, %ids, %profile, ?policy, "netboot: serving node");
    }
    for (node, folder, profile) in &summary.pi {
        tracing::info!(%node, %folder, %profile, "netboot: serving Raspberry Pi node from its serial folder");
    }
    eprintln!(
        "imgbuild netboot: serving {} node(s), {} file(s) on tftp://{} and {}; Ctrl-C stops",
        summary.nodes.len(),
        summary.files,
        udp.local_addr()?,
        e.base_url()
    );
    let tftp_task = tokio::spawn(tftp::serve(
        udp,
        catalog.clone(),
        tokens.clone(),
        tftp_config(args),
        stop_rx.clone(),
    ));
    let router = http::router(catalog, http_config(args, &e), tokens);
    let mut http_stop = stop_rx;
    let http_task = tokio::spawn(async move {
        axum::serve(
            tcp,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = http_stop.changed().await;
        })
        .await
    });
    wait_for_stop().await?;
    eprintln!("imgbuild netboot: stopping");
    let _ = stop_tx.send(true);
    tftp_task
        .await
        .context("the TFTP server")?
        .context("the TFTP server")?;
    for t in dhcp_tasks {
        t.await.context("the proxyDHCP server")??;
    }
    // Downloads still running get a few seconds, then the process ends.
    let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
    Ok(())
}

type DhcpTask = tokio::task::JoinHandle<std::io::Result<()>>;

/// The proxyDHCP on UDP 67 and 4011, when asked for.
fn start_dhcp(
    args: &Args,
    e: &Endpoint,
    catalog: &Arc<dyn Catalog>,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<DhcpTask>> {
    if args.dhcp.dhcp == DhcpMode::None {
        return Ok(Vec::new());
    }
    let std::net::IpAddr::V4(server) = e.listen else {
        anyhow::bail!(
            "--dhcp proxy needs an IPv4 --listen address (DHCPv4 clients reach it), not {}",
            e.listen
        );
    };
    let cfg = dhcp::reply::Config {
        server,
        http_base: e.base_url(),
    };
    let c = catalog.clone();
    let has_file: dhcp::server::HasFile = Arc::new(move |name| c.artifact(name).is_some());
    let c = catalog.clone();
    let shell = matches!(args.unknown, UnknownArg::Shell);
    let policy: dhcp::server::Policy =
        Arc::new(move |client, class| match c.admit(&client.ids(class)) {
            Admission::Boot { boot, why } => {
                tracing::info!(mac = %client.mac, node = %boot.node, "dhcp: matched ({why})");
                None
            }
            Admission::Refused { node, why } => Some(format!("node {node}: {why}")),
            Admission::Unknown(_) if shell => None,
            Admission::Unknown(why) => {
                Some(format!("{why} (--unknown shell answers every machine)"))
            }
        });
    let mut tasks = Vec::new();
    for port in [dhcp::server::DHCP_PORT, dhcp::server::PXE_PORT] {
        let l = dhcp::server::Listener::bind(server, port).map_err(|err| {
            anyhow::anyhow!(
                "cannot listen on UDP {port} for proxyDHCP: {err}\n  help: run as root or with CAP_NET_BIND_SERVICE and, when another DHCP server on this host holds the port, CAP_NET_RAW (`imgbuild netboot install-unit` grants both); or use --dhcp none with `imgbuild netboot dnsmasq`"
            )
        })?;
        eprintln!("imgbuild netboot: proxyDHCP on UDP {port}: {}", l.mode());
        tasks.push(tokio::spawn(dhcp::server::serve(
            l,
            cfg.clone(),
            has_file.clone(),
            policy.clone(),
            stop.clone(),
        )));
    }
    Ok(tasks)
}

fn tftp_config(args: &Args) -> tftp::Config {
    tftp::Config {
        limits: Limits {
            max_blksize: args.max_blksize.clamp(512, 65464),
            max_windowsize: args.max_windowsize.max(1),
            ..Limits::default()
        },
        max_transfers: args.max_transfers.max(1),
        max_per_client: args.max_transfers_per_client.map(|n| n.max(1)),
        client_rate: args.max_rate_per_client.map(|r| r.max(1)),
    }
}

fn http_config(args: &Args, e: &Endpoint) -> http::Config {
    http::Config {
        base_url: e.base_url(),
        unknown: match args.unknown {
            UnknownArg::Ignore => Unknown::Ignore,
            UnknownArg::Shell => Unknown::Shell,
        },
    }
}

/// `--unknown-profile`: the profile resolved now; each unknown machine's seed is rendered
/// when it first asks (its secrets read then, from the same secrets file).
fn default_profile(args: &Args, ctx: &Context) -> Result<Option<DefaultProfile>> {
    let Some(profile) = &args.unknown_profile else {
        return Ok(None);
    };
    let resolved = ctx
        .resolve_concrete(profile, &[])
        .with_context(|| format!("--unknown-profile {profile}"))?;
    let nodes = args.nodes.clone();
    let render = Box::new(move |node: &Node| {
        let inputs = nodes.inputs_for(&resolved, node.clone(), &crate::cmd::env_var)?;
        render_seed(&resolved, &inputs)
    });
    Ok(Some(DefaultProfile {
        profile: profile.clone(),
        render,
    }))
}

fn bind_error(e: std::io::Error, proto: &str, addr: SocketAddr) -> anyhow::Error {
    let help = match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "\n  help: ports below 1024 need root or CAP_NET_BIND_SERVICE (the unit from `imgbuild netboot install-unit` has it)"
        }
        std::io::ErrorKind::AddrInUse => {
            "\n  help: another server holds it (Pi-hole with enable-tftp? a dnsmasq?); stop it or choose another port"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "\n  help: --listen must be an address of this host (`ip -br addr`)"
        }
        _ => "",
    };
    anyhow::anyhow!("cannot listen on {proto} {addr}: {e}{help}")
}

async fn wait_for_stop() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("watching SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("watching Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
