//! The transport of a simulated cluster: turmoil's TCP under tonic, on both sides.
//!
//! Servers accept [`SimStream`]s from [`incoming`]; peers and clients dial with
//! [`sim_connector`], which turns each tonic `Endpoint` into a lazily connecting channel over
//! `turmoil::net::TcpStream`. Everything here must run inside a turmoil host or client.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::{Endpoint, Uri};
use turmoil::net::{TcpListener, TcpStream};

/// A peer connector (`Fn(Endpoint) -> Channel`): the node's [`cart_node::Connect`] and the
/// client's [`cart_client::Connect`] are this same type.
pub type SimConnect = cart_node::Connect;

/// One accepted simulated TCP connection, as tonic's server wants it.
#[derive(Debug)]
pub struct SimStream(TcpStream);

/// What a server knows about a simulated connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConnectInfo {
    /// This end's address, when the stream still knows it.
    pub local: Option<SocketAddr>,
    /// The dialling end's address, when the stream still knows it.
    pub remote: Option<SocketAddr>,
}

impl Connected for SimStream {
    type ConnectInfo = SimConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        SimConnectInfo {
            local: self.0.local_addr().ok(),
            remote: self.0.peer_addr().ok(),
        }
    }
}

impl AsyncRead for SimStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The connections `listener` accepts, for `Node::serve`. Never ends; an accept error is passed
/// on (tonic logs it and goes on accepting).
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<SimStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| SimStream(stream));
        Some((accepted, listener))
    })
}

/// Dials `uri` (`http://IP:PORT` or `http://HOST:PORT` with a turmoil host name) over turmoil TCP.
async fn dial(uri: Uri) -> io::Result<TokioIo<TcpStream>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} in {uri}"));
    let host = uri.host().ok_or_else(|| invalid("no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
    let stream = TcpStream::connect((host, port)).await?;
    Ok(TokioIo::new(stream))
}

/// The connector for nodes and clients inside a simulation: each endpoint becomes a lazily
/// connecting channel over turmoil TCP (the endpoint's connect timeout and keepalive apply).
pub fn sim_connector() -> SimConnect {
    Arc::new(|endpoint: Endpoint| endpoint.connect_with_connector_lazy(tower::service_fn(dial)))
}

/// The connector a `CartClient` inside a `sim.client(...)` closure uses (the same as the
/// nodes'): pass it to `CartClient::connect_with_connector`.
pub fn sim_client_connector() -> cart_client::Connect {
    sim_connector()
}
