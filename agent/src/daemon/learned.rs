//! Routes learned over BGP, from the speaker's events to the route programmer in bursts: a
//! table of 100,000 routes arrives as 100,000 events, and one programmer command per event
//! would make the hand-over, not the kernel, the slow part.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use skog_bgp::RouteEvent;
use tokio::sync::mpsc;

use crate::dataplane::{LearnedNextHop, LearnedRoute, ProgrammerError, ProgrammerHandle};

/// The most events taken into one burst.
const MAX_BURST: usize = 4096;

/// What a burst of speaker events changes, last event per prefix winning.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Burst {
    /// Prefix → its next hops, or `None` when it is gone.
    pub changes: HashMap<IpNet, Option<Arc<[IpAddr]>>>,
    /// The burst ends with `Converged` (it covers every change before it).
    pub converged: bool,
}

impl Burst {
    /// `first`, and whatever else is already queued (up to a bound, and never past a
    /// `Converged`, which must follow the changes it covers).
    pub fn take(first: RouteEvent, queued: &mut mpsc::UnboundedReceiver<RouteEvent>) -> Burst {
        let mut burst = Burst::default();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(event) = next {
            taken += 1;
            match event {
                RouteEvent::Install { prefix, next_hops } => {
                    burst.changes.insert(prefix, Some(next_hops));
                }
                RouteEvent::Remove { prefix } => {
                    burst.changes.insert(prefix, None);
                }
                RouteEvent::Converged => {
                    burst.converged = true;
                    break;
                }
            }
            next = if taken < MAX_BURST {
                queued.try_recv().ok()
            } else {
                None
            };
        }
        burst
    }

    /// Hands the burst to the programmer: removals, installations, then (if it ends with
    /// `Converged`) permission to delete learned routes nobody re-announced.
    pub async fn send(self, programmer: &ProgrammerHandle) -> Result<(), ProgrammerError> {
        let mut install = Vec::new();
        let mut remove = Vec::new();
        // The speaker shares one set among many prefixes; so does the programmer.
        let mut converted: HashMap<Arc<[IpAddr]>, Arc<[LearnedNextHop]>> = HashMap::new();
        for (prefix, next_hops) in self.changes {
            match next_hops {
                Some(hops) => install.push(LearnedRoute {
                    prefix,
                    next_hops: Arc::clone(converted.entry(hops).or_insert_with_key(|hops| {
                        hops.iter()
                            .map(|&gateway| LearnedNextHop {
                                gateway,
                                interface: None,
                            })
                            .collect()
                    })),
                }),
                None => remove.push(prefix),
            }
        }
        if !remove.is_empty() {
            programmer.remove_learned_routes(remove).await?;
        }
        if !install.is_empty() {
            programmer.set_learned_routes(install).await?;
        }
        if self.converged {
            programmer.learned_complete().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_keeps_the_last_change_per_prefix_and_stops_at_converged() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let hop: IpAddr = "192.0.2.0".parse().unwrap();
        for event in [
            RouteEvent::Remove {
                prefix: net("0.0.0.0/0"),
            },
            RouteEvent::Install {
                prefix: net("203.0.113.0/25"),
                next_hops: vec![hop].into(),
            },
            RouteEvent::Converged,
            RouteEvent::Remove {
                prefix: net("203.0.113.0/25"),
            },
        ] {
            tx.send(event).unwrap();
        }
        let first = RouteEvent::Install {
            prefix: net("0.0.0.0/0"),
            next_hops: vec![hop].into(),
        };
        let burst = Burst::take(first, &mut rx);
        assert!(burst.converged);
        assert_eq!(burst.changes[&net("0.0.0.0/0")], None);
        assert_eq!(
            burst.changes[&net("203.0.113.0/25")],
            Some(vec![hop].into())
        );
        // What came after Converged is the next burst's.
        let rest = Burst::take(rx.try_recv().unwrap(), &mut rx);
        assert_eq!(rest.changes[&net("203.0.113.0/25")], None);
        assert!(!rest.converged);
    }
}
