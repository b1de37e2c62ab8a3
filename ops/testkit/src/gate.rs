//! A TCP gate between a node and a real server: while it is shut, every connection through
//! it is cut and new ones are refused, so the node really loses its broker (or database),
//! and only this test's node does. The test's own clients connect to the server directly.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Gate {
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
}

impl Gate {
    /// A gate to `upstream`, shut or open from the start.
    pub async fn start(upstream: SocketAddr, open: bool) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the gate");
        let addr = listener.local_addr().expect("gate address");
        let (tx, rx) = watch::channel(open);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*rx.borrow() {
                    drop(client);
                    continue;
                }
                tokio::spawn(pass(client, upstream, rx.clone()));
            }
        });
        Gate { addr, open: tx }
    }

    /// Cuts every connection and refuses new ones.
    pub fn shut(&self) {
        self.open.send_replace(false);
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

async fn pass(mut client: TcpStream, upstream: SocketAddr, mut open: watch::Receiver<bool>) {
    let Ok(Ok(mut server)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream)).await
    else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = open.wait_for(|open| !open) => {}
    }
}
