//! Small HTTP servers for tests, on free loopback ports, each on a thread of its own and
//! stopped when dropped.

use std::net::SocketAddr;

use axum::Router;
use tokio::sync::oneshot;

/// A running server; dropping it stops it.
pub struct Server {
    /// Where it listens.
    pub address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Server {
    /// Serves `router` on a free loopback port.
    pub fn start(router: Router) -> Server {
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, address) = std::sync::mpsc::channel();
        // Not joined on drop: a graceful shutdown waits for open keep-alive connections.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                ready
                    .send(listener.local_addr().expect("address"))
                    .expect("report address");
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        Server {
            address: address.recv().expect("server started"),
            stop: Some(stop),
        }
    }

    /// A server answering every request with `name`, as a web backend would.
    pub fn backend(name: &'static str) -> Server {
        Server::start(Router::new().fallback(move || async move { name }))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
