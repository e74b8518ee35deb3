//! The fallback network where namespaces are unavailable (not root, no `ip netns`): nodes on
//! loopback, and one fault-injecting TCP proxy per directed link, so node i dials node j through
//! the proxy for (i, j). Each node gets its own cluster file naming those proxies as its peers.
//!
//! Faults: a blocked link stops moving bytes both ways (packets dropped, as nft DROP would: the
//! peer's calls time out, no reset); a lossy link stalls each chunk with the given probability
//! for [`LOSS_STALL`] (TCP retransmission after a lost segment). Clients reach the nodes directly.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use rand::RngExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a "lost" chunk is held back.
pub const LOSS_STALL: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Faults {
    blocked: Mutex<BTreeSet<(usize, usize)>>,
    loss_percent: AtomicU32,
}

impl Faults {
    fn blocked(&self, a: usize, b: usize) -> bool {
        self.blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&(a.min(b), a.max(b)))
    }
}

/// Every node's real address and every link's proxy; proxies run on their own thread.
pub struct ProxyNet {
    nodes: Vec<SocketAddr>,
    /// `links[i][j]`: where node i dials node j.
    links: Vec<Vec<SocketAddr>>,
    faults: Arc<Faults>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn free_addr() -> Result<SocketAddr> {
    let port = cart_node::launcher::free_port().context("finding a free port")?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

impl ProxyNet {
    pub fn create(count: usize) -> Result<ProxyNet> {
        let nodes: Vec<SocketAddr> = (0..count).map(|_| free_addr()).collect::<Result<_>>()?;
        let mut links = Vec::new();
        let mut listeners = Vec::new();
        for i in 0..count {
            let mut row = Vec::new();
            for j in 0..count {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a proxy")?;
                listener.set_nonblocking(true)?;
                let addr = listener.local_addr()?;
                row.push(addr);
                if i != j {
                    listeners.push((i, j, listener));
                }
            }
            links.push(row);
        }
        let faults = Arc::new(Faults::default());
        let (shutdown, stopped) = tokio::sync::oneshot::channel();
        let (proxy_faults, targets) = (faults.clone(), nodes.clone());
        let thread = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                eprintln!("cart-jepsen: could not start the proxy runtime");
                return;
            };
            runtime.block_on(async move {
                for (i, j, listener) in listeners {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        continue;
                    };
                    tokio::spawn(accept(listener, i, j, targets[j], proxy_faults.clone()));
                }
                let _ = stopped.await;
            });
        });
        Ok(ProxyNet {
            nodes,
            links,
            faults,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Where node `i` listens (and clients connect).
    pub fn node_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i]
    }

    /// Where node `from` dials node `to` (its own address for itself).
    pub fn link_addr(&self, from: usize, to: usize) -> SocketAddr {
        if from == to {
            self.nodes[to]
        } else {
            self.links[from][to]
        }
    }

    pub fn partition(&self, blocked: &[(usize, usize)]) {
        let mut set = self.faults.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        set.extend(blocked.iter().map(|&(a, b)| (a.min(b), a.max(b))));
    }

    pub fn loss(&self, percent: u32) {
        self.faults.loss_percent.store(percent, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.faults
            .blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.faults.loss_percent.store(0, Ordering::SeqCst);
    }
}

impl Drop for ProxyNet {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(listener: TcpListener, from: usize, to: usize, target: SocketAddr, faults: Arc<Faults>) {
    while let Ok((inbound, _)) = listener.accept().await {
        let faults = faults.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::select! {
                _ = pump(ri, wo, from, to, &faults) => {}
                _ = pump(ro, wi, from, to, &faults) => {}
            }
        });
    }
}

/// Copies one direction, holding bytes back while the link is blocked or a chunk is "lost".
async fn pump(
    mut from_half: tokio::net::tcp::OwnedReadHalf,
    mut to_half: tokio::net::tcp::OwnedWriteHalf,
    a: usize,
    b: usize,
    faults: &Faults,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from_half.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        // Bounded by the connection: a blocked link holds this chunk until healed or closed.
        while faults.blocked(a, b) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let loss = faults.loss_percent.load(Ordering::SeqCst);
        if loss > 0 && rand::rng().random_range(0..100) < loss {
            tokio::time::sleep(LOSS_STALL).await;
        }
        to_half.write_all(&buf[..n]).await?;
    }
}
