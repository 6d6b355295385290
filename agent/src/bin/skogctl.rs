//! skogctl, the operator CLI: asks skogd over its local API socket and prints tables (or JSON
//! with `-o json`). Exit codes: 0 ok, 1 an error, 2 skogd unreachable.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use skog_agent::api::client::{ClientError, get};
use skog_agent::api::types::{
    EndpointStatus, PeerStatus, PolicyShow, RouteEntry, Status, TraceResult,
};
use skog_agent::ctl;

#[derive(Debug, Parser)]
#[command(name = "skogctl", version, about = "Inspect a running skogd")]
struct Args {
    /// skogd's API socket.
    #[arg(long, global = true, default_value = "/run/skog/skog.sock")]
    socket: PathBuf,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Version, uptime, datastore state, counts, peers summary, rejected resources.
    Status,
    /// BGP peers: state, since, prefixes received/accepted/advertised, last error.
    Peers,
    /// Routes: local endpoint routes and learned routes, or per peer, or as the kernel has them.
    Routes {
        /// Routes advertised to this peer.
        #[arg(long, value_name = "PEER", conflicts_with_all = ["received", "kernel"])]
        advertised: Option<String>,
        /// Routes received from this peer.
        #[arg(long, value_name = "PEER", conflicts_with = "kernel")]
        received: Option<String>,
        /// Skog's routes as the kernel has them.
        #[arg(long)]
        kernel: bool,
    },
    /// Local endpoints.
    Endpoints,
    /// One endpoint, by tap, port id (or a unique prefix) or address.
    Endpoint {
        /// tap name, port id or address.
        key: String,
    },
    /// Security-group rules.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// The rules in force for an endpoint, as nftables shows them, with counters.
    Show {
        /// The endpoint's tap.
        interface: String,
    },
    /// Which rule would allow or drop a packet, and why.
    Trace {
        /// Source address.
        src: String,
        /// Destination address.
        dst: String,
        /// Protocol, with a destination port where it has ports: tcp/22, udp/53, icmp.
        proto: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skogctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e @ ClientError::Unreachable { .. }) => {
            eprintln!("skogctl: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("skogctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<String, ClientError> {
    let socket = &args.socket;
    let json = args.output == Output::Json;
    Ok(match &args.command {
        Command::Status => render(
            json,
            &get::<Status>(socket, "/v1/status").await?,
            ctl::status,
        ),
        Command::Peers => render(
            json,
            &get::<Vec<PeerStatus>>(socket, "/v1/peers").await?,
            |p| ctl::peers(p),
        ),
        Command::Routes {
            advertised,
            received,
            kernel,
        } => {
            let mut query = Vec::new();
            if let Some(peer) = advertised {
                query.push(format!("advertised={}", encode(peer)));
            }
            if let Some(peer) = received {
                query.push(format!("received={}", encode(peer)));
            }
            if *kernel {
                query.push("kernel=true".into());
            }
            let path = format!("/v1/routes?{}", query.join("&"));
            render(json, &get::<Vec<RouteEntry>>(socket, &path).await?, |r| {
                ctl::routes(r)
            })
        }
        Command::Endpoints => render(
            json,
            &get::<Vec<EndpointStatus>>(socket, "/v1/endpoints").await?,
            |e| ctl::endpoints(e),
        ),
        Command::Endpoint { key } => {
            let all = get::<Vec<EndpointStatus>>(socket, "/v1/endpoints").await?;
            let one = ctl::find_endpoint(&all, key).map_err(|message| ClientError::Refused {
                status: 404,
                message,
            })?;
            render(json, one, ctl::endpoint)
        }
        Command::Policy(PolicyCommand::Show { interface }) => {
            let shown =
                get::<PolicyShow>(socket, &format!("/v1/policy/{}", encode(interface))).await?;
            render(json, &shown, |s| s.ruleset.clone())
        }
        Command::Policy(PolicyCommand::Trace { src, dst, proto }) => {
            let (proto, port) = match proto.split_once('/') {
                Some((p, port)) => (p, Some(port)),
                None => (proto.as_str(), None),
            };
            let mut path = format!(
                "/v1/policy-trace?src={}&dst={}&proto={}",
                encode(src),
                encode(dst),
                encode(proto)
            );
            if let Some(port) = port {
                path.push_str(&format!("&port={}", encode(port)));
            }
            render(json, &get::<TraceResult>(socket, &path).await?, ctl::trace)
        }
    })
}

fn render<T: Serialize + ?Sized>(json: bool, value: &T, table: impl Fn(&T) -> String) -> String {
    if json {
        serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .unwrap_or_default()
    } else {
        table(value)
    }
}

/// Percent-encodes a query or path component.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
