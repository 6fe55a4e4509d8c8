//! A fake Agones SDK sidecar, for the tests: the gRPC server of Agones'
//! own sdk.proto (built by build.rs from the `agones` crate's copy), which
//! records each call in order and lets a test allocate the game server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status, Streaming};

#[allow(clippy::all, dead_code)]
pub mod proto {
    tonic::include_proto!("agones.dev.sdk");
    pub mod alpha {
        tonic::include_proto!("agones.dev.sdk.alpha");
    }
}

use proto::alpha::sdk_server::{Sdk as AlphaSdk, SdkServer as AlphaServer};
use proto::sdk_server::{Sdk, SdkServer};
use proto::{game_server, Duration as ProtoDuration, Empty, GameServer, KeyValue};

/// What the fake sidecar saw, for the test to read.
#[derive(Clone, Default)]
pub struct Record {
    /// Every call but the health pings, in order: `Ready`,
    /// `SetLabel players=3`, `PlayerConnect 7`, `Shutdown`, ...
    pub calls: Arc<Mutex<Vec<String>>>,
    /// Health pings so far.
    pub health: Arc<AtomicUsize>,
    state: Arc<tokio::sync::watch::Sender<String>>,
}

impl Record {
    fn note(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until a call starting with `prefix` came (30 s at most).
    pub fn wait_for(&self, prefix: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.calls().iter().any(|c| c.starts_with(prefix)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn health_pings(&self) -> usize {
        self.health.load(Ordering::SeqCst)
    }

    /// Has Agones allocate the game server: its watchers see the state.
    pub fn allocate(&self) {
        self.state.send_replace("Allocated".into());
    }
}

struct Fake(Record);

fn game_server(state: &str) -> GameServer {
    GameServer {
        status: Some(game_server::Status {
            state: state.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Sdk for Fake {
    async fn ready(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.0.note("Ready".into());
        Ok(Response::new(Empty {}))
    }

    async fn allocate(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.0.note("Allocate".into());
        Ok(Response::new(Empty {}))
    }

    async fn shutdown(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.0.note("Shutdown".into());
        Ok(Response::new(Empty {}))
    }

    async fn health(&self, request: Request<Streaming<Empty>>) -> Result<Response<Empty>, Status> {
        let mut pings = request.into_inner();
        while let Ok(Some(_)) = pings.message().await {
            self.0.health.fetch_add(1, Ordering::SeqCst);
        }
        Ok(Response::new(Empty {}))
    }

    async fn get_game_server(&self, _: Request<Empty>) -> Result<Response<GameServer>, Status> {
        Ok(Response::new(game_server(&self.0.state.borrow())))
    }

    type WatchGameServerStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<GameServer, Status>> + Send>>;

    async fn watch_game_server(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::WatchGameServerStream>, Status> {
        self.0.note("WatchGameServer".into());
        let mut state = self.0.state.subscribe();
        let updates = async_stream(move |tx| async move {
            loop {
                let now = state.borrow_and_update().clone();
                if tx.send(Ok(game_server(&now))).await.is_err() || state.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(updates))
    }

    async fn set_label(&self, request: Request<KeyValue>) -> Result<Response<Empty>, Status> {
        let label = request.into_inner();
        self.0
            .note(format!("SetLabel {}={}", label.key, label.value));
        Ok(Response::new(Empty {}))
    }

    async fn set_annotation(&self, request: Request<KeyValue>) -> Result<Response<Empty>, Status> {
        let note = request.into_inner();
        self.0
            .note(format!("SetAnnotation {}={}", note.key, note.value));
        Ok(Response::new(Empty {}))
    }

    async fn reserve(&self, _: Request<ProtoDuration>) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
}

#[tonic::async_trait]
impl AlphaSdk for Fake {
    async fn player_connect(
        &self,
        request: Request<proto::alpha::PlayerId>,
    ) -> Result<Response<proto::alpha::Bool>, Status> {
        self.0
            .note(format!("PlayerConnect {}", request.into_inner().player_id));
        Ok(Response::new(proto::alpha::Bool { bool: true }))
    }

    async fn player_disconnect(
        &self,
        request: Request<proto::alpha::PlayerId>,
    ) -> Result<Response<proto::alpha::Bool>, Status> {
        self.0.note(format!(
            "PlayerDisconnect {}",
            request.into_inner().player_id
        ));
        Ok(Response::new(proto::alpha::Bool { bool: true }))
    }

    async fn set_player_capacity(
        &self,
        _: Request<proto::alpha::Count>,
    ) -> Result<Response<proto::alpha::Empty>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn get_player_capacity(
        &self,
        _: Request<proto::alpha::Empty>,
    ) -> Result<Response<proto::alpha::Count>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn get_player_count(
        &self,
        _: Request<proto::alpha::Empty>,
    ) -> Result<Response<proto::alpha::Count>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn is_player_connected(
        &self,
        _: Request<proto::alpha::PlayerId>,
    ) -> Result<Response<proto::alpha::Bool>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn get_connected_players(
        &self,
        _: Request<proto::alpha::Empty>,
    ) -> Result<Response<proto::alpha::PlayerIdList>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
}

/// A stream fed by the task `feed` runs with its sender.
fn async_stream<F, Fut>(
    feed: F,
) -> std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<GameServer, Status>> + Send>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<GameServer, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(feed(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Starts a fake sidecar on a loopback port of its own, on a thread of its
/// own; it serves until the process ends.
pub fn start() -> (SocketAddr, Record) {
    let record = Record {
        state: Arc::new(tokio::sync::watch::channel("Scheduled".to_owned()).0),
        ..Record::default()
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let serving = record.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tonic::transport::Server::builder()
                .add_service(SdkServer::new(Fake(serving.clone())))
                .add_service(AlphaServer::new(Fake(serving)))
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
    });
    (rx.recv().unwrap(), record)
}
