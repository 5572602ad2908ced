//! Sizes both ends agree on. The gateway announces the ones it uses in `register_success`.

/// Largest payload of one binary frame. Senders cut bodies into chunks of at most this size.
pub const MAX_FRAME_PAYLOAD: usize = 64 * 1024;

/// Largest control message (JSON text frame). A full route `sync` of a big cluster is the
/// largest message; request headers are limited far below this by the gateway.
pub const MAX_CONTROL_MESSAGE: usize = 1024 * 1024;

/// Largest WebSocket message either side accepts: a control message or a frame with header.
pub const MAX_WS_MESSAGE: usize = MAX_CONTROL_MESSAGE;

/// Default per-stream window: bytes a sender may have in flight before the receiver grants
/// more. Large enough to keep a loopback or LAN link busy, small enough that a tunnel with a
/// thousand slow streams stays within a few hundred MiB at worst.
pub const DEFAULT_STREAM_WINDOW: u32 = 256 * 1024;

/// A stream's receive window may grow to this while its consumer keeps up (see
/// `window::RecvWindow`): one window per round trip is a stream's speed limit.
pub const MAX_GROWN_WINDOW: u32 = 4 * 1024 * 1024;

/// All the growth a tunnel's streams may hold together, beyond their starting windows, so
/// that growth cannot be turned into memory: streams that read fast and then stall hold at
/// most this much more than their starting windows.
pub const TUNNEL_GROWTH_BUDGET: u64 = 32 * 1024 * 1024;

/// The largest window (and so the largest credit a sender may hold) either side accepts.
pub const MAX_STREAM_WINDOW: u32 = 16 * 1024 * 1024;

/// Smallest window a gateway may announce: one full frame must always fit.
pub const MIN_STREAM_WINDOW: u32 = MAX_FRAME_PAYLOAD as u32;

/// Longest route host (a DNS name).
pub const MAX_ROUTE_HOST: usize = 253;

/// Longest route path, in bytes.
pub const MAX_ROUTE_PATH: usize = 2 * 1024;

/// Longest `service` or `namespace` of a route, in bytes.
pub const MAX_ROUTE_SERVICE: usize = 512;

/// Annotations one route may carry, and their total size in bytes (keys and values).
pub const MAX_ROUTE_ANNOTATIONS: usize = 32;
pub const MAX_ROUTE_ANNOTATION_BYTES: usize = 4 * 1024;
