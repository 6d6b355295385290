//! `cargo xtask demo`. Until skogd is wired end to end, this is the testbed self-check the README
//! describes: one BIRD ToR, two hypervisors with two VMs each, the hypervisors plumbed the way
//! Felix does and announcing with BIRD (Calico's path), and traffic between the VMs.

use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use skog_testbed::{EchoServer, HvId, Protocol, Testbed, TorDaemon, VmId, VmSpec, wait_until};

use crate::setup;

const CONVERGE: Duration = Duration::from_secs(60);

pub fn run(keep: bool) -> Result<()> {
    setup::run()?;
    println!("\nSkog demo (testbed self-check: skogd is not wired yet, see README)\n");
    let mut tb = Testbed::new("demo")?;
    if keep {
        tb.keep_logs();
    }
    let tor = tb.add_tor("tor1", TorDaemon::Bird, 65001)?;
    let mut vms: Vec<VmId> = Vec::new();
    for h in 0..2 {
        let hv = tb.add_hypervisor(&format!("hv{}", h + 1), 65101 + h as u32)?;
        let uplink = tb.link(hv, tor)?;
        println!(
            "[1/5] hypervisor hv{} up, uplink {} <-> ToR {}",
            h + 1,
            uplink.hv_v4,
            uplink.tor_v4
        );
        for v in 0..2 {
            let n = h * 2 + v;
            let vm = tb.add_vm(hv, VmSpec::numbered(&format!("vm{}", n + 1), n))?;
            tb.plumb_vm_by_hand(vm)?;
            let spec = &tb.vm(vm)?.spec;
            println!(
                "      vm{} on hv{}: tap {}, {} / {}",
                n + 1,
                h + 1,
                tb.vm(vm)?.tap,
                spec.ipv4.map(|a| a.to_string()).unwrap_or_default(),
                spec.ipv6.map(|a| a.to_string()).unwrap_or_default()
            );
            vms.push(vm);
        }
    }
    tb.start_tor(tor)?;
    for h in 0..2 {
        tb.start_reference_bird(HvId(h))?;
    }
    println!("[2/5] BIRD running on tor1 and on both hypervisors; waiting for the BGP sessions");
    let t = tb.tor(tor)?;
    let wanted = vms.len() * 2;
    wait_until(
        "the ToR to install every VM's host routes",
        CONVERGE,
        || {
            let mut routes = t.kernel_routes(false).map_err(|e| e.to_string())?;
            routes.extend(t.kernel_routes(true).map_err(|e| e.to_string())?);
            let host = routes.iter().filter(|r| r.protocol == "bird").count();
            if host >= wanted {
                Ok(())
            } else {
                Err(format!("{host} of {wanted}"))
            }
        },
    )?;
    println!(
        "[3/5] tor1's BGP sessions:\n{}",
        indent(&t.cli("show protocols")?)
    );
    println!("      routes in tor1's kernel:");
    for v6 in [false, true] {
        for r in t.kernel_routes(v6)?.iter().filter(|r| r.protocol == "bird") {
            let via: Vec<String> = r.gateways.iter().map(IpAddr::to_string).collect();
            println!("        {:<28} via {}", r.dst.to_string(), via.join(", "));
        }
    }
    let (vm1, vm3) = (vms[0], vms[2]);
    let (a, b) = (tb.vm(vm1)?.ns(), tb.vm(vm3)?.ns());
    for v6 in [false, true] {
        let to = tb.vm_addr(vm3, v6)?;
        let ok = wait_until("a ping from vm1 to vm3", CONVERGE, || {
            a.ping(to, 1)
                .map_err(|e| e.to_string())?
                .then_some(())
                .ok_or_else(String::new)
        });
        ok.with_context(|| format!("vm1 cannot reach vm3 at {to}"))?;
        println!("[4/5] vm1 (hv1) -> vm3 (hv2) at {to}: ping ok");
    }
    let _server = EchoServer::start(b, Protocol::Tcp, IpAddr::from([0u8; 4]), 80)?;
    let to = SocketAddr::new(tb.vm_addr(vm3, false)?, 80);
    let outcome = a.probe(Protocol::Tcp, to, Duration::from_secs(3))?;
    println!("[5/5] vm1 -> vm3 tcp/80: {outcome:?}");
    if !outcome.is_allowed() {
        bail!("tcp/80 from vm1 to vm3 was {outcome:?}");
    }
    if keep {
        println!("\nThe topology stays up. Explore it from another shell, e.g.:");
        println!("  ip netns list | grep skog-");
        println!(
            "  ip netns exec {} birdc -s {}/bird.ctl show route",
            t.ns().name(),
            t.dir().display()
        );
        println!(
            "  ip netns exec {} ping {}",
            a.name(),
            tb.vm_addr(vm3, false)?
        );
        println!(
            "Press Enter to tear it down (if this process is killed instead: cargo xtask testbed-clean)."
        );
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
    drop(tb);
    println!(
        "\nSummary: 1 ToR, 2 hypervisors, 4 VMs; host routes reached the ToR over BGP; VMs on"
    );
    println!(
        "different hypervisors reached each other over IPv4 and IPv6. Everything was removed."
    );
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("        {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
