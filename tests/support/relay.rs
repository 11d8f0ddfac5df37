//! A TCP relay in front of a server that a test can take down and bring back on the same
//! address: while down it accepts connections and drops them at once (and cuts the ones it
//! was relaying), so a client sees the server as unreachable; once up it relays again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running relay; it stops when dropped.
pub struct Relay {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    /// Connections being relayed right now.
    active: Arc<AtomicUsize>,
}

impl Relay {
    /// Relay `127.0.0.1:<free port>` to `target`, up.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, watch) = watch::channel(true);
        let active = Arc::new(AtomicUsize::new(0));
        let counter = active.clone();
        tokio::spawn(async move {
            let mut ctl = watch.clone();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    changed = ctl.changed() => match changed {
                        Ok(()) => continue,
                        Err(_) => return,
                    },
                };
                let Ok((inbound, _)) = accepted else { return };
                if !*watch.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut watch = watch.clone();
                let counter = counter.clone();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (mut a, mut b) = (inbound, outbound);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                            _ = watch.wait_for(|up| !*up) => {}
                        }
                    }
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Relay { addr, up, active }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Take the server "down": new connections are dropped, relayed ones are cut. Returns
    /// once every relayed connection is closed (bounded wait).
    pub async fn down(&self) {
        self.up.send_replace(false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.active.load(Ordering::SeqCst) > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "relayed connections did not close"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Bring it back.
    pub fn up(&self) {
        self.up.send_replace(true);
    }
}
