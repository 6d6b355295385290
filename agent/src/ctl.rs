//! skogctl's presentation: API answers rendered as tables and text blocks that read like
//! `birdc show protocols` and `calicoctl node status`. Pure functions, golden-tested.

use comfy_table::{Table, presets};

use crate::api::types::{EndpointStatus, PeerStatus, RouteEntry, Status, TraceResult};

/// A duration in seconds as BIRD-style short text: `7s`, `5m06s`, `3h04m`, `2d01h`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_uppercase()));
    t
}

/// Lines without the cell padding at both ends (it makes golden files fragile).
fn finish(t: &Table) -> String {
    let mut out: String = t
        .lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(&l).trim_end().to_owned() + "\n")
        .collect();
    if out.is_empty() {
        out.push('\n');
    }
    out
}

fn or_dash(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

/// `skogctl status`.
pub fn status(s: &Status) -> String {
    let ds = &s.datastore;
    let mut out = format!(
        "skogd {} on {}, up {}\n\
         datastore:  {} {}{}{}\n\
         endpoints:  {} up, {} down, {} error\n\
         routes:     {} programmed\n\
         BGP peers:  {} of {} established\n",
        s.version,
        s.node_name,
        duration(s.uptime_s),
        ds.kind,
        ds.state,
        if ds.ready {
            ""
        } else {
            " (datastoreReady=false: dataplane changes paused)"
        },
        ds.last_error
            .as_ref()
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default(),
        s.endpoints.up,
        s.endpoints.down,
        s.endpoints.error,
        s.routes_programmed,
        s.peers.established,
        s.peers.total,
    );
    if s.rejected.is_empty() {
        out.push_str("rejected:   none\n");
    } else {
        out.push_str(&format!("rejected:   {} resource(s)\n", s.rejected.len()));
        let mut t = table(&["key", "reason"]);
        for r in &s.rejected {
            t.add_row([r.key.as_str(), r.reason.as_str()]);
        }
        out.push_str(&finish(&t));
    }
    out
}

/// `skogctl peers`.
pub fn peers(peers: &[PeerStatus]) -> String {
    let mut t = table(&[
        "name",
        "address",
        "asn",
        "state",
        "since",
        "received",
        "accepted",
        "advertised",
        "last error",
    ]);
    for p in peers {
        t.add_row([
            p.name.clone(),
            p.address.clone(),
            p.asn.to_string(),
            p.state.clone(),
            duration(p.uptime_s),
            p.received.to_string(),
            p.accepted.to_string(),
            p.advertised.to_string(),
            or_dash(&p.last_error),
        ]);
    }
    finish(&t)
}

/// `skogctl routes`.
pub fn routes(routes: &[RouteEntry]) -> String {
    let mut t = table(&["prefix", "next hops", "origin", "age"]);
    for r in routes {
        t.add_row([
            r.prefix.clone(),
            if r.next_hops.is_empty() {
                "-".into()
            } else {
                r.next_hops.join(", ")
            },
            r.origin.clone(),
            r.age_s.map(duration).unwrap_or_else(|| "-".into()),
        ]);
    }
    finish(&t)
}

/// `skogctl endpoints`.
pub fn endpoints(endpoints: &[EndpointStatus]) -> String {
    let mut t = table(&[
        "interface",
        "mac",
        "addresses",
        "floating ips",
        "state",
        "security groups",
        "reported",
    ]);
    for e in endpoints {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".into()
            } else {
                v.join(", ")
            }
        };
        t.add_row([
            e.interface.clone(),
            e.mac.clone(),
            list(&e.addresses),
            list(&e.floating_ips),
            e.state.clone(),
            list(&e.security_groups),
            e.reported_status.clone(),
        ]);
    }
    finish(&t)
}

/// `skogctl endpoint <tap|port-id|address>`: one endpoint in detail.
pub fn endpoint(e: &EndpointStatus) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".into()
        } else {
            v.join(", ")
        }
    };
    format!(
        "interface:        {}\nport:             {}\nworkload:         {}\nmac:              {}\n\
         addresses:        {}\nfloating ips:     {}\nstate:            {}\nsecurity groups:  {}\n\
         reported status:  {}\nlast error:       {}\n",
        e.interface,
        e.port_id,
        e.workload,
        e.mac,
        list(&e.addresses),
        list(&e.floating_ips),
        e.state,
        list(&e.security_groups),
        e.reported_status,
        or_dash(&e.last_error),
    )
}

/// Finds the endpoint `key` names: its tap, its port id (or a unique prefix of it), or one of
/// its addresses (with or without the prefix length).
pub fn find_endpoint<'a>(
    endpoints: &'a [EndpointStatus],
    key: &str,
) -> Result<&'a EndpointStatus, String> {
    let matches: Vec<&EndpointStatus> = endpoints
        .iter()
        .filter(|e| {
            e.interface == key
                || e.port_id.starts_with(key)
                || e.addresses
                    .iter()
                    .any(|a| a == key || a.split('/').next() == Some(key))
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no endpoint with interface, port id or address {key:?}"
        )),
        many => Err(format!(
            "{key:?} matches {} endpoints; be more specific",
            many.len()
        )),
    }
}

/// `skogctl policy trace`.
pub fn trace(r: &TraceResult) -> String {
    let mut out = format!(
        "verdict:  {}\nrule:     {}\nreason:   {}\n",
        r.verdict,
        or_dash(&r.rule),
        r.reason
    );
    if !r.path.is_empty() {
        out.push_str(&format!("path:     {}\n", r.path.join(" -> ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_bird() {
        assert_eq!(duration(7), "7s");
        assert_eq!(duration(306), "5m06s");
        assert_eq!(duration(3 * 3600 + 4 * 60 + 5), "3h04m");
        assert_eq!(duration(2 * 86_400 + 3600), "2d01h");
    }

    fn ep(interface: &str, port: &str, addr: &str) -> EndpointStatus {
        EndpointStatus {
            interface: interface.into(),
            port_id: port.into(),
            workload: "w".into(),
            mac: "fa:16:3e:00:00:01".into(),
            addresses: vec![addr.into()],
            floating_ips: vec![],
            state: "up".into(),
            security_groups: vec![],
            reported_status: "up".into(),
            last_error: None,
        }
    }

    #[test]
    fn endpoints_are_found_by_tap_port_or_address() {
        let eps = [
            ep("tap1", "aaaa-1", "198.51.100.10/32"),
            ep("tap2", "aaab-2", "198.51.100.11/32"),
        ];
        assert_eq!(find_endpoint(&eps, "tap2").unwrap().interface, "tap2");
        assert_eq!(find_endpoint(&eps, "aaaa").unwrap().interface, "tap1");
        assert_eq!(
            find_endpoint(&eps, "198.51.100.11").unwrap().interface,
            "tap2"
        );
        assert!(
            find_endpoint(&eps, "aaa")
                .unwrap_err()
                .contains("matches 2")
        );
        assert!(
            find_endpoint(&eps, "tap9")
                .unwrap_err()
                .contains("no endpoint")
        );
    }
}
