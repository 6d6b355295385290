//! One test per transition of the session state machine.

use super::*;
use crate::codec::Update;

const US: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);

fn caps() -> Capabilities {
    Capabilities {
        families: vec![Family::Ipv4, Family::Ipv6],
        route_refresh: true,
        enhanced_route_refresh: true,
        asn4: Some(4_200_000_001),
        graceful_restart: None,
        extended_message: true,
        extended_next_hop_v4: true,
    }
}

fn cfg() -> FsmConfig {
    FsmConfig {
        local_asn: 4_200_000_001,
        router_id: US,
        peer_asn: 65001,
        hold_time: 9,
        connect_retry: Duration::from_secs(1),
        passive: false,
        idle_hold: Duration::from_secs(1),
        max_idle_hold: Duration::from_secs(8),
        capabilities: caps(),
    }
}

fn peer_open() -> Open {
    Open {
        version: 4,
        asn: 65001,
        hold_time: 90,
        router_id: PEER,
        capabilities: Capabilities {
            asn4: Some(65001),
            ..caps()
        },
    }
}

fn msg(m: Message) -> Event {
    Event::Message(m)
}

fn in_state(state: State) -> Fsm {
    let mut fsm = Fsm::new(cfg());
    let steps: &[Event] = match state {
        State::Idle => &[],
        State::Connect => &[Event::ManualStart],
        State::Active => &[Event::ManualStart, Event::TcpFailed],
        State::OpenSent => &[Event::ManualStart, Event::TcpConnected],
        State::OpenConfirm => &[
            Event::ManualStart,
            Event::TcpConnected,
            msg(Message::Open(peer_open())),
        ],
        State::Established => &[
            Event::ManualStart,
            Event::TcpConnected,
            msg(Message::Open(peer_open())),
            msg(Message::Keepalive),
        ],
    };
    for e in steps {
        fsm.handle(e.clone());
    }
    assert_eq!(fsm.state(), state);
    fsm
}

fn sent_notification(actions: &[Action]) -> Option<(u8, u8)> {
    actions.iter().find_map(|a| match a {
        Action::Send(Outgoing::Notification(n)) => Some((n.code, n.subcode)),
        _ => None,
    })
}

fn starts(actions: &[Action], timer: Timer) -> Option<Duration> {
    actions.iter().find_map(|a| match a {
        Action::StartTimer(t, d) if *t == timer => Some(*d),
        _ => None,
    })
}

fn down(actions: &[Action]) -> Option<&DownReason> {
    actions.iter().find_map(|a| match a {
        Action::Down(r) => Some(r),
        _ => None,
    })
}

#[test]
fn idle_start_connects_and_arms_the_retry_timer() {
    let mut fsm = Fsm::new(cfg());
    let a = fsm.handle(Event::ManualStart);
    assert_eq!(fsm.state(), State::Connect);
    assert!(a.contains(&Action::Connect));
    assert_eq!(
        starts(&a, Timer::ConnectRetry),
        Some(Duration::from_secs(1))
    );
}

#[test]
fn idle_start_of_a_passive_session_waits_in_active() {
    let mut fsm = Fsm::new(FsmConfig {
        passive: true,
        ..cfg()
    });
    let a = fsm.handle(Event::ManualStart);
    assert_eq!(fsm.state(), State::Active);
    assert!(!a.contains(&Action::Connect));
}

#[test]
fn idle_refuses_connections_and_ignores_messages() {
    let mut fsm = in_state(State::Idle);
    assert_eq!(fsm.handle(Event::TcpConnected), vec![Action::Disconnect]);
    assert!(fsm.handle(msg(Message::Keepalive)).is_empty());
    assert!(
        fsm.handle(Event::TimerExpired(Timer::IdleHold)).is_empty(),
        "stopped"
    );
    assert_eq!(fsm.state(), State::Idle);
}

#[test]
fn connect_retry_expiry_retries_the_connection() {
    let mut fsm = in_state(State::Connect);
    let a = fsm.handle(Event::TimerExpired(Timer::ConnectRetry));
    assert_eq!(fsm.state(), State::Connect);
    assert!(a.contains(&Action::Disconnect) && a.contains(&Action::Connect));
    assert!(starts(&a, Timer::ConnectRetry).is_some());
}

#[test]
fn connect_failure_waits_in_active_then_retries() {
    let mut fsm = in_state(State::Connect);
    let a = fsm.handle(Event::TcpFailed);
    assert_eq!(fsm.state(), State::Active);
    assert!(starts(&a, Timer::ConnectRetry).is_some());
    let a = fsm.handle(Event::TimerExpired(Timer::ConnectRetry));
    assert_eq!(fsm.state(), State::Connect);
    assert!(a.contains(&Action::Connect));
}

#[test]
fn passive_session_keeps_waiting_when_the_retry_timer_fires() {
    let mut fsm = Fsm::new(FsmConfig {
        passive: true,
        ..cfg()
    });
    fsm.handle(Event::ManualStart);
    let a = fsm.handle(Event::TimerExpired(Timer::ConnectRetry));
    assert_eq!(fsm.state(), State::Active);
    assert!(!a.contains(&Action::Connect));
}

#[test]
fn active_failure_goes_idle_with_a_restart_delay() {
    let mut fsm = in_state(State::Active);
    let a = fsm.handle(Event::TcpFailed);
    assert_eq!(fsm.state(), State::Idle);
    assert_eq!(starts(&a, Timer::IdleHold), Some(Duration::from_secs(1)));
    let a = fsm.handle(Event::TimerExpired(Timer::IdleHold));
    assert_eq!(fsm.state(), State::Connect);
    assert!(a.contains(&Action::Connect));
}

#[test]
fn connection_sends_our_open_from_connect_and_active() {
    for state in [State::Connect, State::Active] {
        let mut fsm = in_state(state);
        let a = fsm.handle(Event::TcpConnected);
        assert_eq!(fsm.state(), State::OpenSent);
        let open = a.iter().find_map(|a| match a {
            Action::Send(Outgoing::Open(o)) => Some(o.clone()),
            _ => None,
        });
        let open = open.unwrap();
        assert_eq!(
            (open.asn, open.hold_time, open.router_id),
            (4_200_000_001, 9, US)
        );
        assert_eq!(starts(&a, Timer::Hold), Some(LARGE_HOLD));
        assert!(a.contains(&Action::StopTimer(Timer::ConnectRetry)));
    }
}

#[test]
fn stale_timers_in_connect_are_ignored() {
    let mut fsm = in_state(State::Connect);
    assert!(fsm.handle(Event::TimerExpired(Timer::Hold)).is_empty());
    assert_eq!(fsm.state(), State::Connect);
}

#[test]
fn valid_open_is_confirmed_with_negotiated_timers() {
    let mut fsm = in_state(State::OpenSent);
    let a = fsm.handle(msg(Message::Open(peer_open())));
    assert_eq!(fsm.state(), State::OpenConfirm);
    assert!(a.contains(&Action::Send(Outgoing::Keepalive)));
    // Hold is the smaller of 9 and 90; keepalives every third of it.
    assert_eq!(starts(&a, Timer::Hold), Some(Duration::from_secs(9)));
    assert_eq!(starts(&a, Timer::Keepalive), Some(Duration::from_secs(3)));
    let n = fsm.negotiated().unwrap();
    assert_eq!(
        (n.peer_asn, n.peer_router_id, n.hold_time),
        (65001, PEER, 9)
    );
}

#[test]
fn capabilities_are_the_intersection_of_both_opens() {
    let mut fsm = in_state(State::OpenSent);
    let mut open = peer_open();
    open.capabilities = Capabilities {
        families: vec![Family::Ipv6],
        route_refresh: true,
        asn4: None,
        ..Capabilities::default()
    };
    fsm.handle(msg(Message::Open(open)));
    let n = fsm.negotiated().unwrap();
    assert_eq!(n.families, vec![Family::Ipv6]);
    assert!(n.route_refresh && !n.enhanced_route_refresh);
    assert!(!n.asn4 && !n.extended_message && !n.extended_next_hop_v4);
}

#[test]
fn zero_hold_time_disables_keepalives_and_the_hold_timer() {
    let mut fsm = in_state(State::OpenSent);
    let a = fsm.handle(msg(Message::Open(Open {
        hold_time: 0,
        ..peer_open()
    })));
    assert_eq!(fsm.state(), State::OpenConfirm);
    assert!(a.contains(&Action::StopTimer(Timer::Hold)));
    assert!(starts(&a, Timer::Keepalive).is_none());
}

#[test]
fn bad_opens_are_refused_with_the_right_subcode() {
    let cases = [
        (
            Open {
                version: 3,
                ..peer_open()
            },
            (2, 1),
        ),
        (
            Open {
                asn: 65002,
                ..peer_open()
            },
            (2, 2),
        ),
        (
            Open {
                router_id: Ipv4Addr::UNSPECIFIED,
                ..peer_open()
            },
            (2, 3),
        ),
        (
            Open {
                hold_time: 2,
                ..peer_open()
            },
            (2, 6),
        ),
        (
            Open {
                capabilities: Capabilities {
                    families: vec![],
                    ..caps()
                },
                ..peer_open()
            },
            (2, 7),
        ),
    ];
    for (open, want) in cases {
        let mut fsm = in_state(State::OpenSent);
        let a = fsm.handle(msg(Message::Open(open)));
        assert_eq!(sent_notification(&a), Some(want));
        assert_eq!(fsm.state(), State::Idle);
        assert!(a.contains(&Action::Disconnect));
        assert!(starts(&a, Timer::IdleHold).is_some(), "restarts later");
    }
}

#[test]
fn ibgp_peer_with_our_router_id_is_refused() {
    let mut fsm = Fsm::new(FsmConfig {
        peer_asn: 4_200_000_001,
        ..cfg()
    });
    fsm.handle(Event::ManualStart);
    fsm.handle(Event::TcpConnected);
    let a = fsm.handle(msg(Message::Open(Open {
        asn: 4_200_000_001,
        router_id: US,
        ..peer_open()
    })));
    assert_eq!(sent_notification(&a), Some((2, 3)));
}

#[test]
fn open_sent_connection_loss_returns_to_active() {
    let mut fsm = in_state(State::OpenSent);
    let a = fsm.handle(Event::TcpFailed);
    assert_eq!(fsm.state(), State::Active);
    assert!(starts(&a, Timer::ConnectRetry).is_some());
    assert!(down(&a).is_none());
}

#[test]
fn hold_timer_expiry_sends_hold_timer_expired() {
    for state in [State::OpenSent, State::OpenConfirm, State::Established] {
        let mut fsm = in_state(state);
        let a = fsm.handle(Event::TimerExpired(Timer::Hold));
        assert_eq!(sent_notification(&a), Some((4, 0)), "{state:?}");
        assert_eq!(fsm.state(), State::Idle);
        assert_eq!(down(&a).is_some(), state == State::Established);
    }
}

#[test]
fn unexpected_messages_are_fsm_errors_with_rfc6608_subcodes() {
    let cases = [
        (State::OpenSent, msg(Message::Keepalive), 1),
        (
            State::OpenConfirm,
            msg(Message::Update(Update::default())),
            2,
        ),
        (State::Established, msg(Message::Open(peer_open())), 3),
    ];
    for (state, event, subcode) in cases {
        let mut fsm = in_state(state);
        let a = fsm.handle(event);
        assert_eq!(sent_notification(&a), Some((5, subcode)), "{state:?}");
        assert_eq!(fsm.state(), State::Idle);
    }
}

#[test]
fn first_keepalive_establishes_the_session() {
    let mut fsm = in_state(State::OpenConfirm);
    let a = fsm.handle(msg(Message::Keepalive));
    assert_eq!(fsm.state(), State::Established);
    assert!(matches!(a.last(), Some(Action::Up(n)) if n.peer_asn == 65001));
    assert_eq!(fsm.last_error(), None);
}

#[test]
fn keepalive_timer_sends_keepalives_and_rearms() {
    for state in [State::OpenConfirm, State::Established] {
        let mut fsm = in_state(state);
        let a = fsm.handle(Event::TimerExpired(Timer::Keepalive));
        assert_eq!(
            a,
            vec![
                Action::Send(Outgoing::Keepalive),
                Action::StartTimer(Timer::Keepalive, Duration::from_secs(3))
            ]
        );
        assert_eq!(fsm.state(), state);
    }
}

#[test]
fn established_keepalive_restarts_the_hold_timer() {
    let mut fsm = in_state(State::Established);
    let a = fsm.handle(msg(Message::Keepalive));
    assert_eq!(
        a,
        vec![Action::StartTimer(Timer::Hold, Duration::from_secs(9))]
    );
}

#[test]
fn established_update_is_delivered() {
    let mut fsm = in_state(State::Established);
    let update = Update {
        withdrawn: vec!["198.51.100.0/24".parse().unwrap()],
        ..Update::default()
    };
    let a = fsm.handle(msg(Message::Update(update.clone())));
    assert_eq!(starts(&a, Timer::Hold), Some(Duration::from_secs(9)));
    assert!(a.contains(&Action::Deliver(update)));
}

#[test]
fn route_refresh_is_passed_on_only_when_negotiated_and_known() {
    let mut fsm = in_state(State::Established);
    let a = fsm.handle(msg(Message::RouteRefresh {
        family: Some(Family::Ipv6),
        subtype: 0,
    }));
    assert!(a.contains(&Action::RouteRefresh {
        family: Family::Ipv6,
        subtype: 0
    }));
    let a = fsm.handle(msg(Message::RouteRefresh {
        family: None,
        subtype: 0,
    }));
    assert!(!a.iter().any(|a| matches!(a, Action::RouteRefresh { .. })));

    let mut fsm = in_state(State::OpenSent);
    let mut open = peer_open();
    open.capabilities.route_refresh = false;
    open.capabilities.enhanced_route_refresh = false;
    fsm.handle(msg(Message::Open(open)));
    fsm.handle(msg(Message::Keepalive));
    let a = fsm.handle(msg(Message::RouteRefresh {
        family: Some(Family::Ipv4),
        subtype: 0,
    }));
    assert!(!a.iter().any(|a| matches!(a, Action::RouteRefresh { .. })));
}

#[test]
fn peer_notification_ends_the_session() {
    let mut fsm = in_state(State::Established);
    let cease = Notification::cease_with_text(2, "maintenance");
    let a = fsm.handle(msg(Message::Notification(cease.clone())));
    assert_eq!(down(&a), Some(&DownReason::Received(cease)));
    assert_eq!(sent_notification(&a), None);
    assert_eq!(fsm.state(), State::Idle);
    assert!(fsm.last_error().unwrap().contains("maintenance"));
}

#[test]
fn connection_loss_in_established_is_a_graceful_restart_candidate() {
    let mut fsm = in_state(State::Established);
    let a = fsm.handle(Event::TcpFailed);
    assert_eq!(down(&a), Some(&DownReason::ConnectionLost));
    assert!(starts(&a, Timer::IdleHold).is_some());
}

#[test]
fn decode_errors_send_the_decoder_notification() {
    let mut fsm = in_state(State::Established);
    let n = Notification::new(3, 1);
    let a = fsm.handle(Event::DecodeError(n.clone()));
    assert_eq!(sent_notification(&a), Some((3, 1)));
    assert_eq!(down(&a), Some(&DownReason::Sent(n)));
}

#[test]
fn manual_stop_sends_an_rfc8203_shutdown_and_does_not_restart() {
    let mut fsm = in_state(State::Established);
    let a = fsm.handle(Event::ManualStop {
        text: "skogd shutting down".into(),
    });
    let n = a
        .iter()
        .find_map(|a| match a {
            Action::Send(Outgoing::Notification(n)) => Some(n.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!((n.code, n.subcode), (6, 2));
    assert_eq!(n.shutdown_text().as_deref(), Some("skogd shutting down"));
    assert!(down(&a).is_some());
    assert!(starts(&a, Timer::IdleHold).is_none());
    assert_eq!(fsm.state(), State::Idle);
    assert!(fsm.handle(Event::TimerExpired(Timer::IdleHold)).is_empty());
}

/// An Established session where both sides (`ours`, `theirs`) offered graceful restart with
/// or without the RFC 8538 N bit.
fn established_with_gr(ours: bool, theirs: bool) -> Fsm {
    let gr = |notification| {
        Some(GracefulRestart {
            restarting: false,
            notification,
            restart_time: 120,
            families: vec![(Family::Ipv4, false)],
        })
    };
    let mut fsm = Fsm::new(FsmConfig {
        capabilities: Capabilities {
            graceful_restart: gr(ours),
            ..caps()
        },
        ..cfg()
    });
    let mut open = peer_open();
    open.capabilities.graceful_restart = gr(theirs);
    for e in [
        Event::ManualStart,
        Event::TcpConnected,
        msg(Message::Open(open)),
        msg(Message::Keepalive),
    ] {
        fsm.handle(e);
    }
    assert_eq!(fsm.state(), State::Established);
    fsm
}

#[test]
fn manual_stop_with_the_n_bit_sends_a_hard_reset_carrying_the_shutdown() {
    let mut fsm = established_with_gr(true, true);
    assert!(fsm.negotiated().unwrap().graceful_notification);
    let a = fsm.handle(Event::ManualStop { text: "bye".into() });
    let Some(Action::Down(DownReason::Sent(n))) =
        a.iter().find(|a| matches!(a, Action::Down(_))).cloned()
    else {
        panic!("{a:?}")
    };
    assert_eq!((n.code, n.subcode), (6, 9));
    let inner = n.hard_reset_inner().unwrap();
    assert_eq!((inner.code, inner.subcode), (6, 2));
    assert_eq!(inner.shutdown_text().as_deref(), Some("bye"));
    assert!(!DownReason::Sent(n).keeps_routes(true), "Hard Reset: no GR");
    // One side without the N bit: a plain Cease.
    let mut fsm = established_with_gr(true, false);
    assert!(!fsm.negotiated().unwrap().graceful_notification);
    let a = fsm.handle(Event::ManualStop { text: "bye".into() });
    assert_eq!(sent_notification(&a), Some((6, 2)));
}

#[test]
fn with_the_n_bit_notifications_other_than_hard_reset_keep_the_routes() {
    let cease = Notification::cease_with_text(err::CEASE_ADMIN_RESET, "reset");
    let hold = Notification::new(err::HOLD_EXPIRED, 0);
    assert!(DownReason::ConnectionLost.keeps_routes(false));
    assert!(DownReason::Received(cease.clone()).keeps_routes(true));
    assert!(DownReason::Sent(hold.clone()).keeps_routes(true));
    assert!(!DownReason::Received(cease.clone()).keeps_routes(false));
    assert!(!DownReason::Sent(hold).keeps_routes(false));
    assert!(!DownReason::Received(Notification::hard_reset(&cease)).keeps_routes(true));
}

#[test]
fn manual_stop_before_open_only_closes() {
    let mut fsm = in_state(State::Connect);
    let a = fsm.handle(Event::ManualStop {
        text: String::new(),
    });
    assert_eq!(sent_notification(&a), None);
    assert!(a.contains(&Action::Disconnect));
    assert_eq!(fsm.state(), State::Idle);
}

#[test]
fn restart_delay_doubles_per_failure_up_to_the_cap() {
    let mut fsm = in_state(State::Active);
    let mut delays = Vec::new();
    for _ in 0..6 {
        let a = fsm.handle(Event::TcpFailed);
        delays.push(starts(&a, Timer::IdleHold).unwrap().as_secs());
        fsm.handle(Event::TimerExpired(Timer::IdleHold));
        fsm.handle(Event::TcpFailed); // Connect -> Active
    }
    assert_eq!(delays, vec![1, 2, 4, 8, 8, 8]);
}

#[test]
fn an_established_session_resets_the_back_off() {
    let mut fsm = in_state(State::Active);
    fsm.handle(Event::TcpFailed);
    fsm.handle(Event::TimerExpired(Timer::IdleHold));
    fsm.handle(Event::TcpConnected);
    fsm.handle(msg(Message::Open(peer_open())));
    fsm.handle(msg(Message::Keepalive));
    let a = fsm.handle(Event::TcpFailed);
    assert_eq!(starts(&a, Timer::IdleHold), Some(Duration::from_secs(1)));
}

#[test]
fn collisions_keep_the_connection_of_the_higher_identifier() {
    assert_eq!(collision_winner(PEER, US), CollisionWinner::Ours);
    assert_eq!(collision_winner(US, PEER), CollisionWinner::Theirs);
}

#[test]
fn a_collision_switch_resumes_on_the_other_connection_without_back_off() {
    for state in [State::OpenSent, State::OpenConfirm] {
        let mut fsm = in_state(state);
        let a = fsm.handle(Event::ConnectionReplaced);
        assert_eq!(fsm.state(), State::Active);
        assert!(starts(&a, Timer::IdleHold).is_none());
        assert!(
            !a.contains(&Action::Disconnect),
            "the driver already closed it"
        );
        fsm.handle(Event::TcpConnected);
        assert_eq!(fsm.state(), State::OpenSent);
    }
}
