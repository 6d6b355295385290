//! The RFC 4271 §8 session state machine, without I/O: [`Fsm::handle`] takes an [`Event`]
//! (a timer, a TCP outcome, a decoded message) and returns the [`Action`]s the driver carries
//! out (connect, send, arm a timer, deliver an UPDATE). It owns the session state, OPEN
//! validation, capability and hold-time negotiation, and the restart back-off; the driver in
//! [`crate::session`] owns sockets, clocks and connection collisions (resolved with
//! [`collision_winner`]).
//!
//! Simplifications against RFC 4271: no DelayOpen, and the optional session attributes that
//! only matter for them (DampPeerOscillations) are left out. Automatic restart after an error
//! uses an idle-hold timer that doubles per consecutive failure.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::codec::{
    Capabilities, Family, GracefulRestart, Message, Notification, Open, Update, err,
};

/// Session states (RFC 4271 §8.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Refusing connections; waiting for a start.
    Idle,
    /// Trying to connect.
    Connect,
    /// Waiting for the peer to connect.
    Active,
    /// Our OPEN is sent; waiting for the peer's.
    OpenSent,
    /// OPENs exchanged; waiting for the first KEEPALIVE.
    OpenConfirm,
    /// Exchanging routes.
    Established,
}

impl State {
    /// Lower-case name, as the CLI shows it.
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Connect => "connect",
            State::Active => "active",
            State::OpenSent => "open-sent",
            State::OpenConfirm => "open-confirm",
            State::Established => "established",
        }
    }
}

/// The session's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// ConnectRetryTimer.
    ConnectRetry,
    /// HoldTimer.
    Hold,
    /// KeepaliveTimer.
    Keepalive,
    /// Delay before an automatic restart after an error (the back-off).
    IdleHold,
}

/// What happens to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The operator (or the speaker starting up) starts the session.
    ManualStart,
    /// The operator stops the session; `text` goes into the RFC 8203 shutdown message.
    ManualStop {
        /// The shutdown communication.
        text: String,
    },
    /// A timer fired.
    TimerExpired(Timer),
    /// A TCP connection to the peer is up (ours, or one the peer opened).
    TcpConnected,
    /// The connection attempt failed or the connection closed.
    TcpFailed,
    /// A message arrived.
    Message(Message),
    /// A frame could not be decoded; the NOTIFICATION to send.
    DecodeError(Notification),
    /// Connection collision (RFC 4271 §6.8) lost by the current connection before
    /// Established: the driver closed it and continues with the other one, which it reports
    /// with [`Event::TcpConnected`] next. Not a failure: no back-off.
    ConnectionReplaced,
}

/// A message the driver encodes and sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// Our OPEN.
    Open(Open),
    /// A KEEPALIVE.
    Keepalive,
    /// A NOTIFICATION (the driver closes the connection after it).
    Notification(Notification),
}

/// Why an established session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// We sent this NOTIFICATION (hold timer, bad UPDATE, administrative stop).
    Sent(Notification),
    /// The peer sent this NOTIFICATION.
    Received(Notification),
    /// The TCP connection failed without a NOTIFICATION; under graceful restart the peer's
    /// routes are kept as stale (RFC 4724 §4.2).
    ConnectionLost,
}

impl DownReason {
    /// Whether a helper keeps the peer's routes (as stale) after this end: a lost connection
    /// always, and with the RFC 8538 N bit negotiated any NOTIFICATION but a Hard Reset.
    pub fn keeps_routes(&self, graceful_notification: bool) -> bool {
        match self {
            DownReason::ConnectionLost => true,
            DownReason::Sent(n) | DownReason::Received(n) => {
                graceful_notification && !n.is_hard_reset()
            }
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    /// Close the TCP connection (after sending whatever was queued).
    Disconnect,
    /// Send a message.
    Send(Outgoing),
    /// Arm (or re-arm) a timer.
    StartTimer(Timer, Duration),
    /// Disarm a timer.
    StopTimer(Timer),
    /// The session is established with these parameters.
    Up(Negotiated),
    /// The established session ended.
    Down(DownReason),
    /// Hand an UPDATE to the RIB.
    Deliver(Update),
    /// The peer asks us to re-send a family (RFC 2918), or marks a refresh's start or end
    /// (RFC 7313 subtypes 1 and 2).
    RouteRefresh {
        /// The family.
        family: Family,
        /// 0 request, 1 beginning, 2 end of route refresh.
        subtype: u8,
    },
}

/// The session's fixed parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsmConfig {
    /// Our AS.
    pub local_asn: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// The peer's AS.
    pub peer_asn: u32,
    /// The hold time we propose (0, or at least 3 seconds).
    pub hold_time: u16,
    /// ConnectRetryTime.
    pub connect_retry: Duration,
    /// Only wait for the peer to connect.
    pub passive: bool,
    /// First automatic-restart delay; doubles per consecutive failure up to `max_idle_hold`.
    pub idle_hold: Duration,
    /// Longest automatic-restart delay.
    pub max_idle_hold: Duration,
    /// The capabilities we offer.
    pub capabilities: Capabilities,
}

/// What both OPENs agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The peer's BGP identifier.
    pub peer_router_id: Ipv4Addr,
    /// The peer's AS.
    pub peer_asn: u32,
    /// Hold time in seconds (0: no keepalives, no hold timer).
    pub hold_time: u16,
    /// The families both sides offered.
    pub families: Vec<Family>,
    /// 4-octet AS numbers in AS_PATH.
    pub asn4: bool,
    /// Route refresh (RFC 2918).
    pub route_refresh: bool,
    /// Enhanced route refresh (RFC 7313).
    pub enhanced_route_refresh: bool,
    /// Messages up to 65535 bytes (RFC 8654).
    pub extended_message: bool,
    /// IPv4 NLRI with IPv6 next hops (RFC 8950).
    pub extended_next_hop_v4: bool,
    /// The peer's graceful-restart capability, if it sent one.
    pub peer_graceful_restart: Option<GracefulRestart>,
    /// Both sides set the RFC 8538 N bit: NOTIFICATIONs end the session gracefully too, and
    /// an administrative stop sends a Hard Reset.
    pub graceful_notification: bool,
    /// The capabilities the peer offered, as sent.
    pub peer_capabilities: Capabilities,
}

/// The hold time used before OPENs are exchanged (RFC 4271 suggests 4 minutes).
pub const LARGE_HOLD: Duration = Duration::from_secs(240);

/// One session's state machine.
#[derive(Debug, Clone)]
pub struct Fsm {
    cfg: FsmConfig,
    state: State,
    /// Consecutive failed attempts, for the restart back-off.
    failures: u32,
    /// Stopped by the operator: no automatic restart.
    stopped: bool,
    negotiated: Option<Negotiated>,
    last_error: Option<String>,
}

impl Fsm {
    /// A stopped session; [`Event::ManualStart`] starts it.
    pub fn new(cfg: FsmConfig) -> Fsm {
        Fsm {
            cfg,
            state: State::Idle,
            failures: 0,
            stopped: true,
            negotiated: None,
            last_error: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The parameters of the current (or last) established session.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// The last error, for the CLI.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The configuration.
    pub fn config(&self) -> &FsmConfig {
        &self.cfg
    }

    /// Handles one event.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.state, event) {
            (_, Event::ManualStart) => {
                self.stopped = false;
                if self.state == State::Idle {
                    self.failures = 0;
                    self.start(&mut out);
                }
            }
            (State::Idle, Event::TimerExpired(Timer::IdleHold)) if !self.stopped => {
                self.start(&mut out)
            }
            (State::Idle, Event::TcpConnected) => out.push(Action::Disconnect),
            (State::OpenSent | State::OpenConfirm, Event::ConnectionReplaced) => {
                out.push(Action::StopTimer(Timer::Hold));
                out.push(Action::StopTimer(Timer::Keepalive));
                self.negotiated = None;
                self.state = State::Active;
            }
            (_, Event::ConnectionReplaced) => {}
            (State::Idle, _) => {}

            (_, Event::ManualStop { text }) => {
                self.stopped = true;
                let mut cease = Notification::cease_with_text(err::CEASE_ADMIN_SHUTDOWN, &text);
                // RFC 8538: a plain Cease would leave our routes with the peer as stale.
                if self
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.graceful_notification)
                {
                    cease = Notification::hard_reset(&cease);
                }
                if matches!(
                    self.state,
                    State::OpenSent | State::OpenConfirm | State::Established
                ) {
                    out.push(Action::Send(Outgoing::Notification(cease.clone())));
                }
                self.last_error = Some(format!("stopped: {text}"));
                self.enter_idle(&mut out, Some(DownReason::Sent(cease)));
                out.push(Action::StopTimer(Timer::IdleHold));
            }

            (State::Connect | State::Active, Event::TimerExpired(Timer::ConnectRetry)) => {
                out.push(Action::StartTimer(
                    Timer::ConnectRetry,
                    self.cfg.connect_retry,
                ));
                if !self.cfg.passive {
                    if self.state == State::Connect {
                        out.push(Action::Disconnect);
                    }
                    out.push(Action::Connect);
                    self.state = State::Connect;
                }
            }
            (State::Connect | State::Active, Event::TcpConnected) => {
                out.push(Action::StopTimer(Timer::ConnectRetry));
                out.push(Action::Send(Outgoing::Open(self.our_open())));
                out.push(Action::StartTimer(Timer::Hold, LARGE_HOLD));
                self.state = State::OpenSent;
            }
            (State::Connect, Event::TcpFailed) => {
                out.push(Action::StartTimer(
                    Timer::ConnectRetry,
                    self.cfg.connect_retry,
                ));
                self.state = State::Active;
            }
            (State::Active, Event::TcpFailed) => {
                self.fail(&mut out, "connection failed".into(), None);
            }
            // A timer of another state that fired late.
            (State::Connect | State::Active, Event::TimerExpired(_)) => {}
            (State::Connect | State::Active, other) => {
                self.fail(&mut out, format!("unexpected {}", event_name(&other)), None);
            }

            (State::OpenSent, Event::Message(Message::Open(open))) => match self.accept_open(&open)
            {
                Ok(negotiated) => {
                    out.push(Action::StopTimer(Timer::ConnectRetry));
                    out.push(Action::Send(Outgoing::Keepalive));
                    self.arm_session_timers(&mut out, negotiated.hold_time);
                    self.negotiated = Some(negotiated);
                    self.state = State::OpenConfirm;
                }
                Err(n) => self.fail_with(&mut out, n),
            },
            (State::OpenSent, Event::TcpFailed) => {
                // RFC 4271: back to Active, waiting for the peer or the retry timer.
                out.push(Action::Disconnect);
                out.push(Action::StopTimer(Timer::Hold));
                out.push(Action::StartTimer(
                    Timer::ConnectRetry,
                    self.cfg.connect_retry,
                ));
                self.last_error = Some("connection closed in open-sent".into());
                self.state = State::Active;
            }

            (State::OpenConfirm, Event::Message(Message::Keepalive)) => {
                if let Some(n) = &self.negotiated {
                    if n.hold_time > 0 {
                        out.push(Action::StartTimer(
                            Timer::Hold,
                            Duration::from_secs(u64::from(n.hold_time)),
                        ));
                    }
                    out.push(Action::Up(n.clone()));
                }
                self.failures = 0;
                self.last_error = None;
                self.state = State::Established;
            }

            (State::OpenConfirm | State::Established, Event::TimerExpired(Timer::Keepalive)) => {
                out.push(Action::Send(Outgoing::Keepalive));
                if let Some(n) = &self.negotiated {
                    out.push(Action::StartTimer(
                        Timer::Keepalive,
                        keepalive_interval(n.hold_time),
                    ));
                }
            }
            (State::Established, Event::Message(Message::Keepalive)) => self.restart_hold(&mut out),
            (State::Established, Event::Message(Message::Update(update))) => {
                self.restart_hold(&mut out);
                out.push(Action::Deliver(update));
            }
            (State::Established, Event::Message(Message::RouteRefresh { family, subtype })) => {
                self.restart_hold(&mut out);
                let negotiated = self
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.route_refresh || n.enhanced_route_refresh);
                // RFC 2918 §4: refreshes for families not negotiated are ignored.
                if let Some(family) = family.filter(|_| negotiated) {
                    out.push(Action::RouteRefresh { family, subtype });
                }
            }

            (
                State::OpenSent | State::OpenConfirm | State::Established,
                Event::TimerExpired(Timer::Hold),
            ) => self.fail_with(&mut out, Notification::new(err::HOLD_EXPIRED, 0)),
            (
                State::OpenSent | State::OpenConfirm | State::Established,
                Event::Message(Message::Notification(n)),
            ) => {
                let reason = format!("peer sent {n}");
                self.fail(&mut out, reason, Some(DownReason::Received(n)));
            }
            (State::OpenConfirm | State::Established, Event::TcpFailed) => {
                self.fail(
                    &mut out,
                    "connection closed".into(),
                    Some(DownReason::ConnectionLost),
                );
            }
            (State::OpenSent | State::OpenConfirm | State::Established, Event::DecodeError(n)) => {
                self.fail_with(&mut out, n)
            }
            (State::OpenSent | State::OpenConfirm | State::Established, Event::Message(_))
            | (State::OpenSent | State::OpenConfirm | State::Established, Event::TcpConnected) => {
                // A message or event this state does not expect: FSM error (RFC 6608 subcodes).
                let subcode = match self.state {
                    State::OpenSent => 1,
                    State::OpenConfirm => 2,
                    _ => 3,
                };
                self.fail_with(&mut out, Notification::new(err::FSM, subcode));
            }
            (State::OpenSent | State::OpenConfirm | State::Established, Event::TimerExpired(_)) => {
            }
        }
        out
    }

    fn start(&mut self, out: &mut Vec<Action>) {
        out.push(Action::StartTimer(
            Timer::ConnectRetry,
            self.cfg.connect_retry,
        ));
        if self.cfg.passive {
            self.state = State::Active;
        } else {
            out.push(Action::Connect);
            self.state = State::Connect;
        }
    }

    fn our_open(&self) -> Open {
        Open {
            version: 4,
            asn: self.cfg.local_asn,
            hold_time: self.cfg.hold_time,
            router_id: self.cfg.router_id,
            capabilities: self.cfg.capabilities.clone(),
        }
    }

    /// Validates the peer's OPEN (RFC 4271 §6.2) and negotiates the session.
    fn accept_open(&self, open: &Open) -> Result<Negotiated, Notification> {
        let open_err = |subcode: u8, data: Vec<u8>| Notification {
            code: err::OPEN,
            subcode,
            data,
        };
        if open.version != 4 {
            return Err(open_err(err::OPEN_BAD_VERSION, vec![0, 4]));
        }
        if open.asn != self.cfg.peer_asn {
            return Err(open_err(err::OPEN_BAD_PEER_AS, Vec::new()));
        }
        if open.hold_time == 1 || open.hold_time == 2 {
            return Err(open_err(err::OPEN_BAD_HOLD, Vec::new()));
        }
        let ibgp = self.cfg.peer_asn == self.cfg.local_asn;
        if open.router_id.is_unspecified() || (ibgp && open.router_id == self.cfg.router_id) {
            return Err(open_err(err::OPEN_BAD_ID, Vec::new()));
        }
        let ours = &self.cfg.capabilities;
        let theirs = &open.capabilities;
        let extended_next_hop_v4 = ours.extended_next_hop_v4 && theirs.extended_next_hop_v4;
        let families: Vec<Family> = ours
            .families
            .iter()
            .copied()
            .filter(|f| theirs.families.contains(f))
            .collect();
        if families.is_empty() {
            // Unsupported Capability, naming the families we wanted.
            return Err(open_err(7, Vec::new()));
        }
        Ok(Negotiated {
            peer_router_id: open.router_id,
            peer_asn: open.asn,
            hold_time: self.cfg.hold_time.min(open.hold_time),
            families,
            asn4: ours.asn4.is_some() && theirs.asn4.is_some(),
            route_refresh: ours.route_refresh && theirs.route_refresh,
            enhanced_route_refresh: ours.enhanced_route_refresh && theirs.enhanced_route_refresh,
            extended_message: ours.extended_message && theirs.extended_message,
            extended_next_hop_v4,
            peer_graceful_restart: theirs.graceful_restart.clone(),
            graceful_notification: [&ours.graceful_restart, &theirs.graceful_restart]
                .iter()
                .all(|gr| gr.as_ref().is_some_and(|gr| gr.notification)),
            peer_capabilities: theirs.clone(),
        })
    }

    fn arm_session_timers(&self, out: &mut Vec<Action>, hold_time: u16) {
        if hold_time == 0 {
            out.push(Action::StopTimer(Timer::Hold));
            out.push(Action::StopTimer(Timer::Keepalive));
        } else {
            out.push(Action::StartTimer(
                Timer::Keepalive,
                keepalive_interval(hold_time),
            ));
            out.push(Action::StartTimer(
                Timer::Hold,
                Duration::from_secs(u64::from(hold_time)),
            ));
        }
    }

    fn restart_hold(&self, out: &mut Vec<Action>) {
        if let Some(n) = self.negotiated.as_ref().filter(|n| n.hold_time > 0) {
            out.push(Action::StartTimer(
                Timer::Hold,
                Duration::from_secs(u64::from(n.hold_time)),
            ));
        }
    }

    /// Sends `n`, closes, and goes to Idle with a restart back-off.
    fn fail_with(&mut self, out: &mut Vec<Action>, n: Notification) {
        out.push(Action::Send(Outgoing::Notification(n.clone())));
        let reason = format!("sent {n}");
        self.fail(out, reason, Some(DownReason::Sent(n)));
    }

    /// Closes and goes to Idle, arming the back-off timer for the automatic restart.
    fn fail(&mut self, out: &mut Vec<Action>, error: String, reason: Option<DownReason>) {
        self.last_error = Some(error);
        self.enter_idle(out, reason);
        self.failures = self.failures.saturating_add(1);
        if !self.stopped {
            out.push(Action::StartTimer(Timer::IdleHold, self.idle_hold()));
        }
    }

    /// The restart delay after the current number of consecutive failures.
    fn idle_hold(&self) -> Duration {
        let shift = self.failures.saturating_sub(1).min(16);
        self.cfg
            .idle_hold
            .saturating_mul(1 << shift)
            .min(self.cfg.max_idle_hold)
    }

    fn enter_idle(&mut self, out: &mut Vec<Action>, reason: Option<DownReason>) {
        let was_established = self.state == State::Established;
        if self.state != State::Idle {
            out.push(Action::Disconnect);
        }
        for t in [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive] {
            out.push(Action::StopTimer(t));
        }
        if was_established {
            out.push(Action::Down(reason.unwrap_or(DownReason::ConnectionLost)));
        }
        self.state = State::Idle;
    }
}

fn keepalive_interval(hold_time: u16) -> Duration {
    Duration::from_secs(u64::from((hold_time / 3).max(1)))
}

fn event_name(event: &Event) -> &'static str {
    match event {
        Event::ManualStart => "start",
        Event::ManualStop { .. } => "stop",
        Event::TimerExpired(_) => "timer",
        Event::TcpConnected => "connection",
        Event::TcpFailed => "connection failure",
        Event::Message(Message::Open(_)) => "OPEN",
        Event::Message(Message::Update(_)) => "UPDATE",
        Event::Message(Message::Notification(_)) => "NOTIFICATION",
        Event::Message(Message::Keepalive) => "KEEPALIVE",
        Event::Message(Message::RouteRefresh { .. }) => "ROUTE-REFRESH",
        Event::DecodeError(_) => "malformed message",
        Event::ConnectionReplaced => "connection replacement",
    }
}

/// Which of two colliding connections survives (RFC 4271 §6.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollisionWinner {
    /// The connection we opened.
    Ours,
    /// The connection the peer opened.
    Theirs,
}

/// RFC 4271 §6.8: the connection opened by the speaker with the higher BGP identifier stays.
pub fn collision_winner(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> CollisionWinner {
    if u32::from(local_id) > u32::from(remote_id) {
        CollisionWinner::Ours
    } else {
        CollisionWinner::Theirs
    }
}

#[cfg(test)]
mod tests;
