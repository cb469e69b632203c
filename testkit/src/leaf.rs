//! [`LeafNode`]: a `nats-server` of another region, a leaf node of a hub, behind a link the test
//! can cut and restore.
//!
//! The leaf's remotes do not dial the hub directly: they dial a small TCP relay owned by the
//! harness ([`Link`]), which forwards to the hub's `leafnodes { listen }` port (one relay per
//! node of a hub cluster, all listed in each remote, as a deployment lists every hub node). Cutting the link
//! closes every connection through the relay and refuses new ones, while the hub and the leaf
//! both keep running and keep their own clients: what an outage of the network between two
//! regions does (the leaf then retries its remotes until the link is back). Restarting or
//! killing the leaf instead would also drop region B's local clients, which a link cut does not.
//! The cut is a reset, seen by both servers at once; a silent black hole (packets dropped,
//! noticed only by ping timeouts) is not modelled.

use std::io;
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::process::{Backoff, READY_TIMEOUT};
use crate::{probe, HarnessError, NatsServer};

/// One `remotes` entry of the leaf: which local account it binds and how it authenticates at
/// the hub (the hub account it lands in is the one of these credentials).
#[derive(Clone, Debug, Default)]
pub struct Remote {
    /// The leaf's local account to bind (an account public key in operator mode, a name in
    /// config mode); `None`: the leaf's global account.
    pub account: Option<String>,
    /// A `.creds` file of a user of the hub.
    pub credentials: Option<PathBuf>,
}

/// A running leaf node and the link to its hub; both are torn down on drop.
#[derive(Debug)]
pub struct LeafNode {
    /// The leaf server itself (restart, stop, kill, logs).
    server: NatsServer,
    /// The relays between the leaf's remotes and the hub, one per hub node.
    links: Vec<Link>,
    /// How many remotes the leaf has: the connections it holds when linked.
    remotes: usize,
}

impl LeafNode {
    /// Starts a leaf of `hub` (started with [`NatsServer::start_hub_with_conf`]) with `conf`
    /// (JetStream only if the text turns it on) plus one `leafnodes { remotes }` entry per
    /// `remotes` item, and waits until every remote is connected.
    ///
    /// # Panics
    /// When `hub` has no leafnode listener, `remotes` is empty, or the leaf does not start or
    /// link in time.
    pub fn start(hub: &NatsServer, conf: &str, remotes: &[Remote]) -> LeafNode {
        Self::try_start(hub, conf, remotes).unwrap_or_else(|e| panic!("mesh-testkit: leaf: {e}"))
    }

    /// Like [`LeafNode::start`], returning the error instead of panicking.
    ///
    /// # Panics
    /// When `hub` has no leafnode listener or `remotes` is empty.
    pub fn try_start(
        hub: &NatsServer,
        conf: &str,
        remotes: &[Remote],
    ) -> Result<LeafNode, HarnessError> {
        Self::try_start_to_all(std::slice::from_ref(hub), conf, remotes)
    }

    /// Like [`LeafNode::start`] for a hub cluster ([`crate::Cluster::start_hub`]): every
    /// remote lists every node, so the leaf links through one of them and, when that node is
    /// lost, through another.
    ///
    /// # Panics
    /// When a node has no leafnode listener, `hubs` or `remotes` is empty, or the leaf does not
    /// start or link in time.
    pub fn start_to_all(hubs: &[NatsServer], conf: &str, remotes: &[Remote]) -> LeafNode {
        Self::try_start_to_all(hubs, conf, remotes)
            .unwrap_or_else(|e| panic!("mesh-testkit: leaf: {e}"))
    }

    /// Like [`LeafNode::start_to_all`], returning the error instead of panicking.
    ///
    /// # Panics
    /// When a node has no leafnode listener, or `hubs` or `remotes` is empty.
    pub fn try_start_to_all(
        hubs: &[NatsServer],
        conf: &str,
        remotes: &[Remote],
    ) -> Result<LeafNode, HarnessError> {
        assert!(!hubs.is_empty(), "mesh-testkit: a leaf needs a hub");
        assert!(!remotes.is_empty(), "mesh-testkit: a leaf needs a remote");
        let links = hubs
            .iter()
            .map(|hub| {
                Link::open(hub.leafnode_port().expect(
                    "mesh-testkit: the hub has no leafnode listener; start it with \
                     start_hub_with_conf or Cluster::start_hub",
                ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let relay_ports: Vec<u16> = links.iter().map(|l| l.port).collect();
        let conf = leaf_conf(conf, &relay_ports, remotes);
        let server = NatsServer::try_start_with_conf(&conf)?;
        let leaf = LeafNode {
            server,
            links,
            remotes: remotes.len(),
        };
        leaf.try_wait_linked()?;
        Ok(leaf)
    }

    /// The leaf server: its URL is where region B's clients connect.
    pub fn server(&self) -> &NatsServer {
        &self.server
    }

    /// `nats://127.0.0.1:<port>` of the leaf.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Cuts the link between the regions: closes every connection through it, refuses new
    /// ones, and returns once the leaf reports no connection to the hub. Both servers and all
    /// their clients keep running.
    ///
    /// # Panics
    /// When the leaf still reports a connection after the harness's deadline.
    pub fn cut_link(&self) {
        for link in &self.links {
            link.cut();
        }
        self.wait_leafs(0, "no connection to the hub after the cut")
            .unwrap_or_else(|e| panic!("mesh-testkit: leaf: {e}"));
    }

    /// Restores the link and returns once every remote is connected again (the leaf retries
    /// on its own; by default every second).
    ///
    /// # Panics
    /// When the leaf does not link again in time.
    pub fn restore_link(&self) {
        for link in &self.links {
            link.restore();
        }
        self.try_wait_linked()
            .unwrap_or_else(|e| panic!("mesh-testkit: leaf: {e}"));
    }

    /// Whether the link is cut by [`LeafNode::cut_link`].
    pub fn is_cut(&self) -> bool {
        self.links.iter().all(|l| !l.state.open())
    }

    fn try_wait_linked(&self) -> Result<(), HarnessError> {
        self.wait_leafs(self.remotes, "every remote connected to the hub")
    }

    /// Polls the leaf's `/leafz` until it counts `want` connections.
    fn wait_leafs(&self, want: usize, what: &str) -> Result<(), HarnessError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut backoff = Backoff::new();
        loop {
            let seen = probe::leaf_count(self.server.monitor_port());
            if seen == Some(want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::NotReady {
                    name: "leaf".to_owned(),
                    timeout: READY_TIMEOUT,
                    waiting_for: format!("{what} (/leafz counts {seen:?}, want {want})"),
                    output: std::fs::read_to_string(self.server.log_path()).unwrap_or_default(),
                });
            }
            backoff.wait();
        }
    }
}

/// The leaf's config: the caller's text plus the remotes, each listing every relay.
fn leaf_conf(conf: &str, relay_ports: &[u16], remotes: &[Remote]) -> String {
    let urls: Vec<String> = relay_ports
        .iter()
        .map(|port| format!("\"nats-leaf://127.0.0.1:{port}\""))
        .collect();
    let url = match urls.as_slice() {
        [one] => format!("url: {one}"),
        all => format!("urls: [{}]", all.join(", ")),
    };
    let entries: Vec<String> = remotes
        .iter()
        .map(|r| {
            let mut fields = vec![url.clone()];
            if let Some(account) = &r.account {
                fields.push(format!("account: \"{account}\""));
            }
            if let Some(creds) = &r.credentials {
                fields.push(format!("credentials: \"{}\"", creds.display()));
            }
            format!("    {{ {} }}", fields.join(", "))
        })
        .collect();
    format!(
        "{conf}\n# the link to the hub (region A), through the harness's relay; written by \
         mesh-testkit\nleafnodes {{\n  reconnect: \"1s\"\n  remotes: [\n{}\n  ]\n}}\n",
        entries.join("\n")
    )
}

/// A TCP relay from a port of its own to the hub's leafnode port, with a switch.
#[derive(Debug)]
struct Link {
    /// Where the leaf's remotes connect.
    port: u16,
    /// The switch and the open connections, shared with the accept thread.
    state: Arc<LinkState>,
    /// The accept thread; joined on drop.
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct LinkState {
    /// `true` while the link carries traffic; guards `conns` so that a connection accepted
    /// during a cut is either refused or closed by it, never left running.
    conns: Mutex<(bool, Vec<TcpStream>)>,
    /// Set on drop: the accept thread ends.
    closing: AtomicBool,
}

impl LinkState {
    fn open(&self) -> bool {
        self.lock().0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, Vec<TcpStream>)> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Link {
    fn open(hub_port: u16) -> Result<Link, HarnessError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| HarnessError::io("bind the link relay on 127.0.0.1", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| HarnessError::io("read the link relay's port", e))?
            .port();
        let state = Arc::new(LinkState::default());
        state.lock().0 = true;
        let shared = state.clone();
        let accept = std::thread::Builder::new()
            .name("mesh-testkit-link".into())
            .spawn(move || accept_loop(&listener, hub_port, &shared))
            .map_err(|e| HarnessError::io("start the link relay thread", e))?;
        Ok(Link {
            port,
            state,
            accept: Some(accept),
        })
    }

    fn cut(&self) {
        let mut conns = self.state.lock();
        conns.0 = false;
        for stream in conns.1.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.state.lock().0 = true;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.state.closing.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the blocking accept so the thread sees `closing`.
        let _ = TcpStream::connect_timeout(
            &(Ipv4Addr::LOCALHOST, self.port).into(),
            Duration::from_secs(1),
        );
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, hub_port: u16, state: &LinkState) {
    for incoming in listener.incoming() {
        if state.closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(leaf_side) = incoming else { continue };
        if let Err(e) = relay(leaf_side, hub_port, state) {
            tracing::debug!(error = %e, "link relay: a connection was not relayed");
        }
    }
}

/// Connects one leaf connection to the hub and copies both ways until either side closes.
fn relay(leaf_side: TcpStream, hub_port: u16, state: &LinkState) -> io::Result<()> {
    let mut conns = state.lock();
    if !conns.0 {
        // Cut: refused, as an unreachable region would be.
        return leaf_side.shutdown(Shutdown::Both);
    }
    let hub_side = TcpStream::connect((Ipv4Addr::LOCALHOST, hub_port))?;
    for stream in [&leaf_side, &hub_side] {
        stream.set_nodelay(true)?;
        conns.1.push(stream.try_clone()?);
    }
    drop(conns);
    for (from, to) in [
        (leaf_side.try_clone()?, hub_side.try_clone()?),
        (hub_side, leaf_side),
    ] {
        std::thread::Builder::new()
            .name("mesh-testkit-link-copy".into())
            .spawn(move || copy(from, to))?;
    }
    Ok(())
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    // One side ended: end both, as a broken link would.
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_point_at_the_relay() {
        let conf = leaf_conf(
            "jetstream: disabled",
            &[7],
            &[Remote {
                account: Some("AMESH".into()),
                credentials: Some("/x/leaf.creds".into()),
            }],
        );
        assert!(conf.starts_with("jetstream: disabled\n"));
        assert!(conf.contains(
            "{ url: \"nats-leaf://127.0.0.1:7\", account: \"AMESH\", credentials: \"/x/leaf.creds\" }"
        ));
    }

    #[test]
    fn a_remote_of_a_hub_cluster_lists_every_relay() {
        let conf = leaf_conf("", &[7, 8, 9], &[Remote::default()]);
        assert!(
            conf.contains(
                "{ urls: [\"nats-leaf://127.0.0.1:7\", \"nats-leaf://127.0.0.1:8\", \
                 \"nats-leaf://127.0.0.1:9\"] }"
            ),
            "{conf}"
        );
    }
}
