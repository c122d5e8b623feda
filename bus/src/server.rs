//! The serving side of the bus: one ROUTER socket, used from one thread.

use std::os::fd::RawFd;
use std::time::Duration;

use bus_schema::{
    decode, decode_header, encode, CodecError, EnvelopeHeader, RequestEnvelope, ResponseEnvelope,
    BUS_MESSAGE_BYTES_MAX,
};

use crate::{check_endpoint, BusError};

/// Messages queued per peer, in each direction, before ZeroMQ pushes back
/// (incoming) or drops replies to a peer that stopped reading (outgoing).
pub const SERVER_QUEUE_MESSAGES_MAX: i32 = 10_000;

/// Routing identity of the peer that sent a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerId(Vec<u8>);

impl From<Vec<u8>> for PeerId {
    /// A peer from its ZeroMQ routing id (for tests of code that keys on peers).
    fn from(routing_id: Vec<u8>) -> Self {
        Self(routing_id)
    }
}

/// One message taken off the socket.
#[derive(Debug)]
pub enum Incoming {
    Request(PeerId, RequestEnvelope),
    /// Bytes that are not a valid request. `header` is set when at least the
    /// version and id could be read, so the peer can be told.
    Malformed {
        peer: PeerId,
        header: Option<EnvelopeHeader>,
        error: CodecError,
    },
}

pub struct BusServer {
    endpoint: String,
    socket: zmq::Socket,
    _ctx: zmq::Context,
}

impl BusServer {
    /// Binds a ROUTER socket. For `ipc://` the parent directory must exist; a
    /// socket file left by a dead process is replaced.
    pub fn bind(endpoint: &str) -> Result<Self, BusError> {
        check_endpoint(endpoint)?;
        let ctx = zmq::Context::new();
        let socket = crate::threads::start_as_batch(|| ctx.socket(zmq::ROUTER))
            .map_err(|e| BusError::zmq(endpoint, e))?;
        let setup = || -> zmq::Result<()> {
            socket.set_linger(0)?;
            socket.set_rcvhwm(SERVER_QUEUE_MESSAGES_MAX)?;
            socket.set_sndhwm(SERVER_QUEUE_MESSAGES_MAX)?;
            socket.set_maxmsgsize(BUS_MESSAGE_BYTES_MAX as i64)?;
            socket.bind(endpoint)
        };
        setup().map_err(|e| BusError::zmq(endpoint, e))?;
        Ok(Self {
            endpoint: endpoint.to_string(),
            socket,
            _ctx: ctx,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Waits until a message can be received, `extra_fd` is readable, or the
    /// timeout passes (`None` = no timeout). Returns whether `extra_fd` fired.
    pub fn wait(
        &self,
        timeout: Option<Duration>,
        extra_fd: Option<RawFd>,
    ) -> Result<bool, BusError> {
        let timeout_ms = timeout.map_or(-1, |t| t.as_millis().min(i64::MAX as u128) as i64);
        let mut items = vec![self.socket.as_poll_item(zmq::POLLIN)];
        if let Some(fd) = extra_fd {
            items.push(zmq::PollItem::from_fd(fd, zmq::POLLIN));
        }
        match zmq::poll(&mut items, timeout_ms) {
            Ok(_) | Err(zmq::Error::EINTR) => {}
            Err(e) => return Err(BusError::zmq(&self.endpoint, e)),
        }
        Ok(items.get(1).is_some_and(|i| i.is_readable()))
    }

    /// Takes one message if one is waiting.
    pub fn try_recv(&self) -> Result<Option<Incoming>, BusError> {
        let parts = match self.socket.recv_multipart(zmq::DONTWAIT) {
            Ok(parts) => parts,
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => return Ok(None),
            Err(e) => return Err(BusError::zmq(&self.endpoint, e)),
        };
        let mut parts = parts.into_iter();
        let peer = PeerId(parts.next().unwrap_or_default());
        let body = parts.next().unwrap_or_default();
        if parts.next().is_some() {
            return Ok(Some(Incoming::Malformed {
                peer,
                header: None,
                error: CodecError::Decode("a bus message has exactly one frame".into()),
            }));
        }
        Ok(Some(match decode::<RequestEnvelope>(&body) {
            Ok(envelope) => Incoming::Request(peer, envelope),
            Err(error) => Incoming::Malformed {
                peer,
                header: decode_header(&body).ok(),
                error,
            },
        }))
    }

    /// Sends a reply. A peer that has gone, or stopped reading, loses the
    /// reply; its own request deadline covers that.
    pub fn send(&self, peer: &PeerId, response: &ResponseEnvelope) -> Result<(), BusError> {
        self.send_encoded(peer, encode(response)?)
    }

    /// Sends a reply already encoded (for example with
    /// `bus_schema::messages::put_messages_reply`); same delivery as
    /// [`BusServer::send`]. The bytes are handed to ZeroMQ as they are (no
    /// copy into a buffer of ZeroMQ's own: a read reply may be many MiB).
    pub fn send_encoded(&self, peer: &PeerId, reply: Vec<u8>) -> Result<(), BusError> {
        if reply.len() > BUS_MESSAGE_BYTES_MAX {
            return Err(BusError::Codec(CodecError::TooLarge(reply.len())));
        }
        let body = zmq::Message::from(reply);
        match self
            .socket
            .send_multipart([zmq::Message::from(peer.0.as_slice()), body], zmq::DONTWAIT)
        {
            Ok(()) | Err(zmq::Error::EAGAIN) | Err(zmq::Error::EHOSTUNREACH) => Ok(()),
            Err(e) => Err(BusError::zmq(&self.endpoint, e)),
        }
    }
}
