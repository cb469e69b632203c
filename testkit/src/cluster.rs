//! [`Cluster`]: a JetStream cluster of `nats-server` nodes on loopback.
//!
//! Each node is a [`NatsServer`] named `n1`, `n2`, ... (its `server_name`) with its own client,
//! monitoring and cluster port and its own store dir, and routes to every node. Client and
//! monitoring ports are picked by the server (`-1`); cluster ports must be known up front for
//! the routes, so the harness reserves free ones by binding `127.0.0.1:0`, releases them just
//! before the nodes start, and starts the whole cluster again on fresh ports if another process
//! took one in between.

use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use crate::process::{Launch, READY_TIMEOUT};
use crate::server::{new_dir, NatsServer};
use crate::{nats_server_binary, probe, HarnessError};

/// The JetStream cluster name of every cluster the harness starts.
const CLUSTER_NAME: &str = "mesh-testkit";

/// Attempts at starting a cluster when a reserved cluster port was taken meanwhile.
pub(crate) const PORT_ATTEMPTS: usize = 5;

/// Cluster nodes are ready once JetStream is on; quorum is checked separately, because a
/// restarted node cannot be healthy while too few of the others run.
const NODE_HEALTH: &str = "/healthz?js-enabled-only=true";

/// A running JetStream cluster; every node is killed and its store deleted on drop.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, `n1` first.
    nodes: Vec<NatsServer>,
}

impl Cluster {
    /// Starts `size` nodes (3 for the usual R3 tests) and waits until they have elected a
    /// JetStream meta leader.
    ///
    /// # Panics
    /// When `size` is 0, when no nats-server can be found, or when the cluster does not form.
    pub fn start(size: usize) -> Cluster {
        Self::try_start(size).unwrap_or_else(|e| panic!("mesh-testkit: cluster: {e}"))
    }

    /// Like [`Cluster::start`], returning the error instead of panicking.
    ///
    /// # Panics
    /// When `size` is 0.
    pub fn try_start(size: usize) -> Result<Cluster, HarnessError> {
        Self::try_start_as(size, false)
    }

    /// Like [`Cluster::start`], and every node also listens for leaf nodes (regions) on a port
    /// of its own ([`NatsServer::leafnode_port`]), as each node of a hub cluster must: a leaf
    /// lists them all ([`crate::LeafNode::start_to_all`]) and links through another node when
    /// its node is lost.
    ///
    /// # Panics
    /// As [`Cluster::start`].
    pub fn start_hub(size: usize) -> Cluster {
        Self::try_start_as(size, true).unwrap_or_else(|e| panic!("mesh-testkit: hub cluster: {e}"))
    }

    fn try_start_as(size: usize, hub: bool) -> Result<Cluster, HarnessError> {
        assert!(size > 0, "mesh-testkit: a cluster needs at least one node");
        let mut attempt = 1;
        loop {
            match Self::start_once(size, hub) {
                Err(HarnessError::PortInUse { name, .. }) if attempt < PORT_ATTEMPTS => {
                    tracing::debug!(%name, attempt, "cluster port taken meanwhile; new ports");
                    attempt += 1;
                }
                Err(e) => return Err(e),
                Ok(cluster) => {
                    cluster.try_wait_for_meta_leader()?;
                    return Ok(cluster);
                }
            }
        }
    }

    fn start_once(size: usize, hub: bool) -> Result<Cluster, HarnessError> {
        let binary = nats_server_binary()?;
        let reserved = reserve_ports(if hub { 2 * size } else { size })?;
        let (cluster_ports, leaf_ports) = reserved.split_at(size);
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
            .collect();

        // Spawn every node first, then wait for each: the nodes need each other to settle.
        let mut pending = Vec::with_capacity(size);
        for (i, port) in cluster_ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let conf = node_conf(&name, *port, &routes, leaf_ports.get(i).copied());
            let dir = new_dir(&name)?;
            let launch = Launch::new(&name, binary.clone(), dir.path(), &conf, NODE_HEALTH)?;
            let starting = launch.spawn(None)?;
            // Process first: on an early return it is killed before its dir is deleted.
            pending.push((starting, launch, dir));
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut nodes = Vec::with_capacity(size);
        for (i, (starting, launch, dir)) in pending.into_iter().enumerate() {
            let (proc, ports) = launch.wait_ready(starting, deadline)?;
            let mut node = NatsServer::assemble(launch, dir, proc, ports);
            node.set_leafnode_port(leaf_ports.get(i).copied());
            nodes.push(node);
        }
        Ok(Cluster { nodes })
    }

    /// The client URLs of all nodes, `n1` first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Node `i`, counted from 0: `node(0)` is `n1`. Restart, stop or kill it through the
    /// returned server; call [`Cluster::wait_for_meta_leader`] afterwards when the test needs
    /// JetStream quorum again. Stopping a leader hands leadership over at once; killing it
    /// costs a Raft election timeout (several seconds) before a new leader exists.
    ///
    /// # Panics
    /// When `i` is not below the cluster size.
    pub fn node(&self, i: usize) -> &NatsServer {
        self.nodes.get(i).unwrap_or_else(|| {
            panic!(
                "mesh-testkit: node({i}) of a {}-node cluster (nodes count from 0)",
                self.nodes.len()
            )
        })
    }

    /// All nodes, `n1` first.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// The number of nodes.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Waits until every running node names the same JetStream meta leader and that leader
    /// sees every other running node as current, and returns the leader's index (for
    /// [`Cluster::node`]). From then on, R3 assets can be placed.
    ///
    /// # Panics
    /// When that does not happen in time, e.g. because too few nodes run for a quorum.
    pub fn wait_for_meta_leader(&self) -> usize {
        self.try_wait_for_meta_leader()
            .unwrap_or_else(|e| panic!("mesh-testkit: {e}"))
    }

    /// Like [`Cluster::wait_for_meta_leader`], returning the error instead of panicking.
    pub fn try_wait_for_meta_leader(&self) -> Result<usize, HarnessError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut interval = Duration::from_millis(10);
        loop {
            let running: Vec<(usize, &NatsServer)> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.is_running())
                .collect();
            let seen: Vec<(&str, Option<String>)> = running
                .iter()
                .map(|(_, n)| {
                    let view = probe::meta_view(n.monitor_port()).unwrap_or_default();
                    (n.name(), view.leader)
                })
                .collect();
            let mut waiting = String::from("no agreed leader");
            if let Some(leader) = agreed_leader(&seen) {
                if let Some(&(i, node)) = running.iter().find(|(_, n)| n.name() == leader) {
                    let current = probe::meta_view(node.monitor_port())
                        .map(|v| v.current)
                        .unwrap_or_default();
                    let lagging: Vec<&str> = running
                        .iter()
                        .map(|(_, n)| n.name())
                        .filter(|name| *name != leader && !current.iter().any(|c| c == name))
                        .collect();
                    if lagging.is_empty() {
                        return Ok(i);
                    }
                    waiting = format!(
                        "leader {leader} does not see {} as current",
                        lagging.join(", ")
                    );
                }
            }
            if Instant::now() >= deadline {
                let seen = seen
                    .iter()
                    .map(|(name, leader)| format!("{name}: {}", leader.as_deref().unwrap_or("-")))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(HarnessError::NoMetaLeader {
                    timeout: READY_TIMEOUT,
                    seen: format!("{seen}; {waiting}"),
                });
            }
            std::thread::sleep(interval);
            interval = (interval * 2).min(Duration::from_millis(100));
        }
    }
}

/// The leader every node names, if they all name the same one.
fn agreed_leader<'a>(seen: &'a [(&str, Option<String>)]) -> Option<&'a str> {
    let first = seen.first()?.1.as_deref()?;
    seen.iter()
        .all(|(_, leader)| leader.as_deref() == Some(first))
        .then_some(first)
}

/// The config of one node. Client and monitoring ports, store dir and log are flags.
fn node_conf(name: &str, cluster_port: u16, routes: &[String], leaf: Option<u16>) -> String {
    let leafnodes = leaf.map_or_else(String::new, |port| {
        format!("leafnodes {{\n  listen: \"127.0.0.1:{port}\"\n}}\n")
    });
    format!(
        "# written by mesh-testkit; ports, store dir and log are flags\n\
         server_name: {name}\n\
         jetstream: enabled\n\
         cluster {{\n  \
           name: {CLUSTER_NAME}\n  \
           listen: \"127.0.0.1:{cluster_port}\"\n  \
           routes: [{routes}]\n\
         }}\n\
         {leafnodes}",
        routes = routes.join(", ")
    )
}

/// Finds `count` distinct free ports by holding `127.0.0.1:0` listeners, then releases them.
pub(crate) fn reserve_ports(count: usize) -> Result<Vec<u16>, HarnessError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HarnessError::io("reserve cluster ports on 127.0.0.1", e))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HarnessError::io("read a reserved port", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_needs_agreement() {
        let one = |l: &str| Some(l.to_owned());
        assert_eq!(
            agreed_leader(&[("n1", one("n2")), ("n2", one("n2")), ("n3", one("n2"))]),
            Some("n2")
        );
        assert_eq!(agreed_leader(&[("n1", one("n2")), ("n3", one("n3"))]), None);
        assert_eq!(agreed_leader(&[("n1", None), ("n2", None)]), None);
        assert_eq!(agreed_leader(&[]), None);
    }

    #[test]
    fn node_conf_routes_to_every_node() {
        let routes = vec!["\"nats-route://127.0.0.1:1\"".to_owned()];
        let conf = node_conf("n1", 1, &routes, None);
        assert!(conf.contains("server_name: n1"));
        assert!(conf.contains("routes: [\"nats-route://127.0.0.1:1\"]"));
        assert!(!conf.contains("leafnodes"));
        let hub = node_conf("n1", 1, &routes, Some(2));
        assert!(
            hub.contains("leafnodes {\n  listen: \"127.0.0.1:2\"\n}"),
            "{hub}"
        );
    }

    #[test]
    fn reserved_ports_are_distinct() {
        let ports = reserve_ports(3).expect("reserve");
        assert_eq!(ports.len(), 3);
        assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
    }
}
