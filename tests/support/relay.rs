//! A TCP relay in front of a server that a test can take down and bring back on the same
//! address: while down it accepts connections and drops them at once (and cuts the ones it
//! was relaying), so a client sees the server as unreachable; once up it relays again.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running relay; it stops when dropped.
pub struct Relay {
    addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl Relay {
    /// Relay `127.0.0.1:<free port>` to `target`, up.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, watch) = watch::channel(true);
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
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut a, mut b) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        _ = watch.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Relay { addr, up }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Take the server "down": new connections are dropped, relayed ones are cut.
    pub fn down(&self) {
        self.up.send_replace(false);
    }

    /// Bring it back.
    pub fn up(&self) {
        self.up.send_replace(true);
    }
}
