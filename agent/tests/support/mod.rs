//! Running the route programmer inside a testbed namespace, driven from the test thread.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::thread::JoinHandle;

use skog_agent::dataplane::{
    DataplaneConfig, DesiredEndpoint, MacAddr, Programmer, ProgrammerHandle, RouteEvent, Snapshot,
};
use skog_testbed::{Netns, Testbed, VmId};
use tokio::sync::mpsc;

/// A programmer running on its own thread (a current-thread tokio runtime) inside a namespace.
pub struct InNamespace {
    pub handle: ProgrammerHandle,
    pub events: mpsc::UnboundedReceiver<RouteEvent>,
    thread: Option<JoinHandle<()>>,
}

impl InNamespace {
    pub fn start(ns: &Netns, cfg: DataplaneConfig) -> InNamespace {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns
            .enter(move || {
                // A thread started from a thread inside the namespace is inside it too.
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let (tx, rx) = mpsc::unbounded_channel();
                        let (handle, join) = Programmer::start(cfg, tx).await.unwrap();
                        ready_tx.send((handle, rx)).unwrap();
                        join.await.unwrap();
                    });
                })
            })
            .unwrap();
        let (handle, events) = ready_rx.recv().expect("the programmer did not start");
        InNamespace {
            handle,
            events,
            thread: Some(thread),
        }
    }

    pub fn set(&self, ep: DesiredEndpoint) {
        block_on(self.handle.set_endpoint(ep)).unwrap();
    }

    /// Both parts of the desired state complete: endpoints and learned routes. Returns once
    /// the programmer has reconciled them.
    pub fn complete(&self) {
        block_on(self.handle.desired_complete()).unwrap();
        block_on(self.handle.learned_complete()).unwrap();
        self.snapshot();
    }

    pub fn snapshot(&self) -> Snapshot {
        block_on(self.handle.snapshot()).unwrap()
    }

    pub fn resync(&self) {
        block_on(self.handle.resync()).unwrap();
    }

    /// Route events sent so far, once every command sent before has been applied (a route
    /// shows in the kernel before the end of the reconcile that announces it).
    pub fn take_events(&mut self) -> Vec<RouteEvent> {
        self.snapshot();
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = block_on(self.handle.shutdown());
            let _ = thread.join();
        }
    }
}

impl Drop for InNamespace {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// The endpoint the programmer gets for a testbed VM (what the daemon converts from the model).
pub fn endpoint_of(tb: &Testbed, vm: VmId) -> DesiredEndpoint {
    let v = tb.vm(vm).unwrap();
    let mut addresses = Vec::new();
    if let Some(v4) = v.spec.ipv4 {
        addresses.push(ipnet::IpNet::from(std::net::IpAddr::V4(v4)));
    }
    if let Some(v6) = v.spec.ipv6 {
        addresses.push(ipnet::IpNet::from(std::net::IpAddr::V6(v6)));
    }
    DesiredEndpoint {
        id: format!("wep-{}", v.spec.port_id),
        interface: v.tap.clone(),
        mac: v.spec.mac.parse::<MacAddr>().unwrap(),
        addresses,
        floating_ips: vec![],
        ipv6_gateway: Some(skog_testbed::addressing::VM_GATEWAY_V6),
    }
}

/// What the DHCP agent's interface does on a Calico compute node: the host holds the VM subnet's
/// gateway addresses (here on loopback), so the host itself answers the VMs' gateway.
pub fn add_gateway_addresses(ns: &Netns) {
    ns.ip(&["addr", "add", "198.51.100.1/32", "dev", "lo"])
        .unwrap();
    ns.ip(&["-6", "addr", "add", "2001:db8:100::1/128", "dev", "lo"])
        .unwrap();
}
