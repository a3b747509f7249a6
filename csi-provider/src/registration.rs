//! kubelet's plugin registration (`pluginregistration.Registration` v1), for running without the
//! node-driver-registrar sidecar: a socket in kubelet's `plugins_registry` folder that tells
//! kubelet the driver's name and where its CSI endpoint is.

use tonic::{Request, Response, Status};
use tracing::{error, info};

use crate::proto::registration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse, registration_server::Registration,
};

pub struct Registrar {
    pub driver_name: String,
    /// The CSI endpoint's path as kubelet sees it.
    pub endpoint: String,
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn get_info(&self, _request: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: "CSIPlugin".into(),
            name: self.driver_name.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec!["1.0.0".into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            info!(driver = %self.driver_name, "registered with kubelet");
        } else {
            error!(driver = %self.driver_name, error = %status.error, "kubelet refused the registration");
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

// === kubelet's :authority ===
//
// kubelet's plugin watcher dials the registration socket by its bare path, so grpc-go sends that path as the
// `:authority` of its calls; the HTTP/2 server (h2) refuses a path there as a malformed authority and resets the
// stream (PROTOCOL_ERROR), and the registration never happens. kubelet's CSI calls send `localhost` instead
// (kubernetes/kubernetes#112597); its plugin watcher does not. Each connection to the registration socket therefore
// passes through [`fix_authority`], which rewrites a `:authority` whose name is the static table's (index 1, as grpc-go
// encodes it) to `localhost` in the HEADERS frames the client sends. Everything else passes as it is: the HPACK
// dynamic tables stay in step, as an entry the server stores is never larger than the client's.

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The HPACK static table's index of `:authority`.
const AUTHORITY_INDEX: usize = 1;

/// Serves `listener`'s connections to a gRPC server through [`fix_authority`]: the stream of fixed connections to hand
/// to `serve_with_incoming_shutdown`.
pub fn fixed_incoming(
    listener: tokio::net::UnixListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::io::DuplexStream>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            // Until the server stops taking connections.
            let accepted = tokio::select! {
                () = sender.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let fixed = accepted.map(|(client, _)| {
                let (server_side, ours) = tokio::io::duplex(64 * 1024);
                tokio::spawn(relay(client, ours));
                server_side
            });
            if sender.send(fixed).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// Copies the server's bytes to the client as they are, and the client's through [`fix_authority`].
async fn relay(client: tokio::net::UnixStream, server: tokio::io::DuplexStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let to_client = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    let to_server = async move {
        let mut pending = Vec::new();
        let mut state = Relay::default();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&chunk[..n]);
            let out = fix_authority(&mut pending, &mut state);
            if server_write.write_all(&out).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    tokio::join!(to_client, to_server);
}

/// The largest frame the server accepts (HTTP/2's default `SETTINGS_MAX_FRAME_SIZE`, which tonic keeps).
const MAX_FRAME: usize = 16 * 1024;

/// Where a relay is in the client's byte stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Relay {
    /// Before the connection preface.
    #[default]
    Preface,
    /// Frame by frame.
    Frames,
    /// Everything as it comes: the client sent a frame larger than the server accepts, which the server refuses
    /// (and nothing is buffered for it).
    Passthrough,
}

/// Takes the complete frames (and the preface) off the front of `pending` and returns them, HEADERS frames with a
/// `:authority` rewritten; an incomplete frame stays in `pending`.
pub fn fix_authority(pending: &mut Vec<u8>, state: &mut Relay) -> Vec<u8> {
    let mut out = Vec::with_capacity(pending.len());
    let mut at = 0;
    if *state == Relay::Preface {
        if pending.len() < PREFACE.len() {
            return out;
        }
        // Not a preface: not HTTP/2 as gRPC speaks it; passed on for the server to refuse.
        out.extend_from_slice(&pending[..PREFACE.len()]);
        at = PREFACE.len();
        *state = Relay::Frames;
    }
    while *state == Relay::Frames && pending.len() - at >= 9 {
        let header = &pending[at..at + 9];
        let length = (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
        if length > MAX_FRAME {
            *state = Relay::Passthrough;
            break;
        }
        if pending.len() - at - 9 < length {
            break;
        }
        let (kind, flags) = (header[3], header[4]);
        let payload = &pending[at + 9..at + 9 + length];
        match (kind == HEADERS && flags & END_HEADERS != 0).then(|| rewrite_headers(flags, payload)).flatten() {
            Some((flags, payload)) => {
                let length = payload.len();
                out.extend_from_slice(&[(length >> 16) as u8, (length >> 8) as u8, length as u8, kind, flags]);
                out.extend_from_slice(&header[5..9]);
                out.extend_from_slice(&payload);
            }
            None => out.extend_from_slice(&pending[at..at + 9 + length]),
        }
        at += 9 + length;
    }
    if *state == Relay::Passthrough {
        out.extend_from_slice(&pending[at..]);
        at = pending.len();
    }
    pending.drain(..at);
    out
}

/// A HEADERS payload with its `:authority` made `localhost` (padding dropped); `None` when there is nothing to change
/// or the block is not understood.
fn rewrite_headers(flags: u8, payload: &[u8]) -> Option<(u8, Vec<u8>)> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        let pad = usize::from(*payload.first()?);
        start = 1;
        end = end.checked_sub(pad)?;
    }
    let priority = if flags & PRIORITY != 0 { payload.get(start..start + 5)? } else { &[] };
    let block = payload.get(start + priority.len()..end)?;
    let block = rewrite_block(block)?;
    let mut fixed = priority.to_vec();
    fixed.extend_from_slice(&block);
    Some((flags & !PADDED, fixed))
}

/// Rewrites the literal `:authority` fields of an HPACK header block; `None` when there is none.
fn rewrite_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len());
    let mut at = 0;
    let mut changed = false;
    while at < block.len() {
        let first = block[at];
        // (prefix bits of the index, whether a value string follows)
        let (prefix, literal) = match first {
            b if b & 0x80 != 0 => (7, false),    // indexed field
            b if b & 0xc0 == 0x40 => (6, true),  // literal with incremental indexing
            b if b & 0xe0 == 0x20 => (5, false), // dynamic table size update
            _ => (4, true),                      // literal without indexing, or never indexed
        };
        let (index, used) = integer(&block[at..], prefix)?;
        let field_start = at;
        at += used;
        if !literal {
            out.extend_from_slice(&block[field_start..at]);
            continue;
        }
        if index == 0 {
            // A literal name, then the value: passed on.
            at += string_length(&block[at..])?;
            at += string_length(&block[at..])?;
            out.extend_from_slice(block.get(field_start..at)?);
            continue;
        }
        let value_length = string_length(&block[at..])?;
        if index == AUTHORITY_INDEX {
            out.extend_from_slice(&block[field_start..at]);
            out.push(b"localhost".len() as u8);
            out.extend_from_slice(b"localhost");
            changed = true;
        } else {
            out.extend_from_slice(block.get(field_start..at + value_length)?);
        }
        at += value_length;
    }
    changed.then_some(out)
}

/// An HPACK integer with a `prefix`-bit prefix: its value and the bytes it takes.
fn integer(bytes: &[u8], prefix: u32) -> Option<(usize, usize)> {
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(*bytes.first()?) & max;
    if value < max {
        return Some((value, 1));
    }
    let mut shift = 0;
    for (i, byte) in bytes.iter().enumerate().skip(1) {
        value = value.checked_add(usize::from(byte & 0x7f).checked_shl(shift)?)?;
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
    None
}

/// The bytes an HPACK string literal takes, its length prefix included.
fn string_length(bytes: &[u8]) -> Option<usize> {
    let (length, used) = integer(bytes, 7)?;
    let total = used.checked_add(length)?;
    (total <= bytes.len()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = payload.len();
        let mut out = vec![(length >> 16) as u8, (length >> 8) as u8, length as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_path_authority_becomes_localhost_and_the_rest_passes() {
        let path = b"/var/lib/kubelet/plugins_registry/secrets.vaultsync.dev-reg.sock";
        // :method POST (indexed 3), :scheme http (indexed 6), :path literal with indexing (index 4),
        // :authority literal with indexing (index 1), te: trailers literal name without indexing.
        let mut block = vec![0x83, 0x86, 0x44, 0x05];
        block.extend_from_slice(b"/a/Bc");
        block.push(0x41);
        block.push(path.len() as u8);
        block.extend_from_slice(path);
        block.extend_from_slice(&[0x00, 0x02, b't', b'e', 0x08]);
        block.extend_from_slice(b"trailers");
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let headers = frame(HEADERS, END_HEADERS | PADDED, 1, &[[2u8].as_slice(), &block, &[0, 0]].concat());
        let data = frame(0x0, 0x1, 1, b"\0\0\0\0\0");
        let mut input = [PREFACE, &settings, &headers, &data].concat();
        // Arriving in two parts: the second HEADERS byte onwards later.
        let split = PREFACE.len() + settings.len() + 10;
        let mut pending = input[..split].to_vec();
        let mut state = Relay::default();
        let mut out = fix_authority(&mut pending, &mut state);
        assert_eq!(out, [PREFACE, &settings].concat(), "the preface and whole frames only");
        pending.extend_from_slice(&input.split_off(split));
        out.extend(fix_authority(&mut pending, &mut state));
        assert!(pending.is_empty());
        let mut expected_block = vec![0x83, 0x86, 0x44, 0x05];
        expected_block.extend_from_slice(b"/a/Bc");
        expected_block.extend_from_slice(&[0x41, 9]);
        expected_block.extend_from_slice(b"localhost");
        expected_block.extend_from_slice(&[0x00, 0x02, b't', b'e', 0x08]);
        expected_block.extend_from_slice(b"trailers");
        let expected = [PREFACE, &settings, &frame(HEADERS, END_HEADERS, 1, &expected_block), &data].concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn headers_without_a_literal_authority_are_unchanged() {
        let headers = frame(HEADERS, END_HEADERS, 1, &[0x83, 0x86, 0xbe]);
        let mut pending = [PREFACE, &headers].concat();
        let mut state = Relay::default();
        assert_eq!(fix_authority(&mut pending, &mut state), [PREFACE, &headers].concat());
        // A frame larger than the server accepts: passed on as it comes (the server refuses it), nothing buffered.
        let huge = [0x01, 0x00, 0x00, 0x00, 0x00, 0, 0, 0, 1, 0xaa, 0xbb];
        let mut pending = huge.to_vec();
        assert_eq!(fix_authority(&mut pending, &mut state), huge);
        assert_eq!(state, Relay::Passthrough);
        let mut pending = headers.clone();
        assert_eq!(fix_authority(&mut pending, &mut state), headers, "and everything after it");
        // A long integer (index 200 in the dynamic table).
        assert_eq!(integer(&[0xff, 0x49], 7), Some((200, 2)));
        assert_eq!(integer(&[0xff, 0xff], 7), None);
    }
}
