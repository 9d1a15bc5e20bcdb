//! Follows an HTTP/2 connection's frames as its bytes pass, without buffering them, for
//! what hyper does not tell: which streams' request bodies are still coming in and not
//! yet answered (so each is held to the request timeout until its last byte, however
//! long its handler then takes, or until the server writes its answer's head: a gRPC
//! client or bidirectional stream answered at once is no request being read any more,
//! as an HTTP/1 body streaming after its answer is not), how much response data the
//! client has taken and request data it has sent (DATA payload's data: PINGs, headers
//! and padding do not count, nor DATA to a stream the server no longer serves, which it
//! drops) and, of
//! that, each arriving request's own (what earns it time at the request timeout's
//! minimum rate: its neighbours' DATA does not), and whether its flow-control windows
//! hold the server's data back (a window at zero: output that waits then is the
//! client's doing, not data hyper dropped with a reset stream).
//!
//! A stream above the last stream a GOAWAY from the server names as processed is none of
//! these: h2 ignores its frames and answers nothing on it (the client retries it
//! elsewhere).
//!
//! A stream the client resets while its request is still arriving leaves what it owed
//! (the time it ran past what its data earned) to the streams the client opens next
//! (see [`Arrears`]): its reset does not restart the request clock.
//!
//! An HTTP/1 connection is recognised by its first bytes and left alone.

use std::sync::Arc;

use crate::{
    shared_io::Watch,
    timeout::{Activity, nanos},
};

/// What every HTTP/2 client sends first.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
/// A HEADERS frame's flags that put bytes before its header block.
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// A request whole in one HEADERS frame: its headers and its stream end there.
const WHOLE_REQUEST: u8 = END_HEADERS | END_STREAM;
/// The setting that gives each stream's window its size.
const INITIAL_WINDOW_SIZE: u16 = 0x4;
/// Every window's size until the client says otherwise.
const DEFAULT_WINDOW: i64 = 65_535;
/// The most streams whose windows are followed; beyond them a stream is taken to have
/// room (hyper lets a client open 200 at once by default), and while one is open, DATA
/// to any stream not followed may be request data.
const MAX_FOLLOWED: usize = 256;

/// One connection's frames, as the adapter's stream reads and writes them.
#[derive(Debug)]
pub(super) struct FrameWatch {
    protocol: Protocol,
    read: Cursor,
    written: Cursor,
    streams: Streams,
}

/// What the frames tell the connection's timer. Apart from the cursors, so that a
/// cursor's callbacks can borrow it while the cursor advances.
#[derive(Debug)]
struct Streams {
    activity: Arc<Activity>,
    /// Whether request bodies are timed (the timeout layer has a request timeout).
    times_bodies: bool,
    /// Streams whose request has not fully arrived, and that the server has not
    /// answered.
    incoming: Vec<Incoming>,
    /// The server's HEADERS frame being written, while its first bytes are read for
    /// whether it answers its stream; only while request bodies are timed.
    answer: Option<AnswerRead>,
    /// Its block's first bytes, when they come split across writes (`filled` of them);
    /// never cleared, since only those are read.
    answer_head: [u8; ANSWER_HEAD],
    /// The last-stream-id of the server's GOAWAY being written, while its 4 bytes come.
    goaway: Option<Gather<4>>,
    /// Whether the server's HPACK encoder has put a 1xx status in its table: from then
    /// on, a status it sends from its table may be an informational one.
    informational_indexed: bool,
    /// Whether the first request's headers have arrived: the request clock of the
    /// connection's opening (preface, first headers) stops then.
    opened: bool,
    /// What the requests the client abandoned while they were arriving left owing.
    arrears: Arrears,
    /// What of the client DATA frame being read is request data: decided at its
    /// header, so that its payload costs at most a look among the requests still
    /// arriving.
    request_data: RequestData,
    flow: Flow,
}

/// What of the client DATA frame being read is request data: its data, sent to a stream
/// the server still serves. DATA to a stream that is over is dropped by the server, as a
/// PING is; a padded frame's padding is dropped too, and earns nothing.
#[derive(Debug, Clone, Copy)]
enum RequestData {
    /// None of it: no DATA, or DATA the server drops.
    None,
    /// A padded frame of this length, whose first byte (the padding's length) is next.
    PadLengthNext(u32),
    /// Its next this many bytes; the padding after them is not.
    Next(u32),
}

/// The client's flow-control windows for the server's data: set by its SETTINGS and
/// WINDOW_UPDATE frames, spent by the server's DATA.
#[derive(Debug)]
struct Flow {
    connection: i64,
    /// A new stream's window.
    initial: i64,
    /// Streams the server may still send on, and their windows.
    streams: Vec<(u32, i64)>,
    /// The highest stream the client has opened: a client's new stream always has a
    /// higher number, and a HEADERS frame on one not above it (trailers) opens nothing.
    last_opened: u32,
    /// The last stream the server processes, as its last GOAWAY names it (every
    /// stream until it writes one): h2 ignores a stream above it, and sends nothing on
    /// it.
    last_processed: u32,
    /// Streams opened while `streams` was full, and so not followed, and not seen to
    /// close: while there is one, DATA to a stream not followed may be request data.
    /// Any close of a stream not followed is taken for one of theirs, so a stream
    /// closed twice (ended by the server, then reset) may count for two: the count errs
    /// low, never high, and only once more streams are open at once than are followed.
    unfollowed: u32,
    /// The client frame whose payload is being read, if it is one that sets windows,
    /// and its current entry (a setting is 6 bytes, an increment 4).
    reading: Option<Frame>,
    entry: Gather<6>,
    /// Whether a window is at zero or below, as last told to the timer.
    blocked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// This many bytes of the HTTP/2 preface seen so far.
    Detecting(usize),
    /// Not HTTP/2: the watch ends.
    Http1,
    Http2,
}

/// A stream whose request is still arriving.
#[derive(Debug, Clone, Copy)]
struct Incoming {
    stream: u32,
    /// When its headers began (for the connection's first, when the connection's
    /// first byte came).
    started: u64,
    /// Its own DATA read so far, padding left out: what earns it time at the minimum
    /// rate, where the connection's bytes would count PINGs and other streams' frames.
    data_read: u64,
    headers_done: bool,
    body_done: bool,
}

/// What the requests a client reset while they were still arriving left owing: how long
/// they had run past the time their data earned them at the request timeout's minimum
/// rate (nanoseconds). A stream the client opens before `until` (the request timeout
/// after the last such reset) is timed as if begun that much earlier: a client that
/// abandons each upload just short of its timeout and opens the next at once runs one
/// clock across them all, rather than a fresh one each time. A request that kept pace
/// owes nothing, and one opened after the client has let the request timeout pass
/// starts afresh.
#[derive(Debug, Clone, Copy, Default)]
struct Arrears {
    owed: u64,
    until: u64,
}

impl Arrears {
    /// What is owed at `now`: nothing from `until` on.
    fn at(&self, now: u64) -> u64 {
        if now < self.until { self.owed } else { 0 }
    }
}

/// A server HEADERS frame whose header block's first bytes are read until they tell
/// what its first field is (see [`read_head`]). Small, as one is set at every response:
/// the bytes gathered when they come split across writes are in
/// [`Streams::answer_head`].
#[derive(Debug, Clone, Copy)]
struct AnswerRead {
    stream: u32,
    /// Bytes still to skip before the header block (padding length, priority).
    skip: u8,
    /// The block's first bytes gathered so far, at most [`ANSWER_HEAD`].
    filled: u8,
}

/// `:status` from the static table (indexes 8 to 14: 200, 204, 206, 304, 400, 404,
/// 500), as an indexed field.
const STATIC_STATUSES: std::ops::RangeInclusive<u8> = 0x88..=0x8e;

/// More bytes than a response's first field and the table size updates before it
/// take; a block that does not tell by then is taken to answer nothing.
const ANSWER_HEAD: usize = 16;

/// What a server header block's first field says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// A final status: the stream is answered.
    Final,
    /// A 1xx status (`100 Continue`, `103 Early Hints`), put in the encoder's table if
    /// `indexed`: the answer is still to come.
    Informational { indexed: bool },
    /// Not a status (trailers), or one from the table that may be a 1xx.
    Unknown,
}

/// Reads what the first field of a server header block says, from its first bytes,
/// without the HPACK table; `None` if `block` ends before it tells. hyper's encoder (h2)
/// writes `:status` first: from the static table (200, 204, 206, 304, 400, 404, 500),
/// or written out the first time (any other) and from its table after that.
fn read_head(mut block: impl Iterator<Item = u8>, informational_indexed: bool) -> Option<Head> {
    loop {
        let first = block.next()?;
        return Some(match first {
            // A table size update, which comes first: skipped. A size of 31 or more goes
            // on in bytes with their top bit set.
            0x20..=0x3f => {
                if first == 0x3f {
                    while block.next()? & 0x80 != 0 {}
                }
                continue;
            }
            // The static table's statuses (`STATIC_STATUSES`).
            0x88..=0x8e => Head::Final,
            // The dynamic table (index 62 and up): a status the encoder wrote out before
            // (or a trailer, which comes after its stream's answer).
            0xbe..=0xff if informational_indexed => Head::Unknown,
            0xbe..=0xff => Head::Final,
            // `:status` (name 8) written out: with incremental indexing, without, never
            // indexed. A 1xx begins with `1`, whose Huffman code is `00001`.
            0x48 | 0x08 | 0x18 => {
                let length = block.next()?;
                if length & 0x7f == 0 {
                    return Some(Head::Unknown);
                }
                let leading = block.next()?;
                let informational = if length & 0x80 != 0 {
                    leading >> 3 == 0b00001
                } else {
                    leading == b'1'
                };
                if informational {
                    Head::Informational {
                        indexed: first == 0x48,
                    }
                } else {
                    Head::Final
                }
            }
            _ => Head::Unknown,
        });
    }
}

/// Where a direction's byte stream is in its frames.
#[derive(Debug, Default)]
struct Cursor {
    /// A header split across reads.
    header: Gather<FRAME_HEADER>,
    /// Payload bytes left in the current frame.
    remaining: u32,
    /// The current frame, and whether its payload is split from its header: its end is
    /// then seen apart.
    frame: Frame,
    split: bool,
}

/// Up to `N` bytes of a unit split across reads, gathered until it is whole. Small, as
/// a connection's frame watch holds four: a frame header each way, a window's setting
/// or increment, a GOAWAY's last stream.
#[derive(Debug, Clone, Copy)]
struct Gather<const N: usize> {
    bytes: [u8; N],
    filled: u8,
}

impl<const N: usize> Default for Gather<N> {
    fn default() -> Self {
        Self {
            bytes: [0; N],
            filled: 0,
        }
    }
}

impl<const N: usize> Gather<N> {
    /// Takes from `input` what the unit of `size` bytes still lacks; the unit, once
    /// whole (its first `size` bytes), after which gathering starts again.
    fn take(&mut self, size: usize, input: &mut &[u8]) -> Option<[u8; N]> {
        let filled = usize::from(self.filled);
        let take = (size - filled).min(input.len());
        self.bytes[filled..filled + take].copy_from_slice(&input[..take]);
        *input = &input[take..];
        if filled + take < size {
            self.filled = (filled + take) as u8;
            return None;
        }
        self.filled = 0;
        Some(self.bytes)
    }
}

/// What a cursor has come to.
#[derive(Debug, Clone, Copy)]
enum Seen<'a> {
    /// A frame's header, and whether its whole payload is in the same bytes: what its
    /// flags say (the headers ended, the stream ended) has happened then.
    Header(Frame, bool),
    /// A run of a frame's payload, with the frame's type and stream.
    Payload(u8, u32, &'a [u8]),
    /// The payload of a frame whose header came without all of it is all in: what its
    /// flags say has happened, only now.
    End(Frame),
}

/// A frame header, once complete.
#[derive(Debug, Clone, Copy, Default)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    /// Its payload's length.
    len: u32,
}

impl Cursor {
    /// Advances over `bytes`, telling `seen` each frame header as it completes and each
    /// run of payload bytes with its frame's type and stream.
    #[inline]
    fn advance(&mut self, mut bytes: &[u8], mut seen: impl FnMut(Seen<'_>)) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let run = bytes.len().min(self.remaining as usize);
                seen(Seen::Payload(
                    self.frame.kind,
                    self.frame.stream,
                    &bytes[..run],
                ));
                self.remaining -= run as u32;
                bytes = &bytes[run..];
                if self.remaining == 0 && self.split {
                    seen(Seen::End(self.frame));
                }
                continue;
            }
            let frame = match (
                self.header.filled,
                bytes.split_first_chunk::<FRAME_HEADER>(),
            ) {
                // The usual case: a whole header in the bytes, read where it lies.
                (0, Some((whole, rest))) => {
                    bytes = rest;
                    self.start(whole)
                }
                _ => {
                    let Some(collected) = self.header.take(FRAME_HEADER, &mut bytes) else {
                        return;
                    };
                    self.start(&collected)
                }
            };
            let whole = bytes.len() >= frame.len as usize;
            self.split = !whole;
            seen(Seen::Header(frame, whole));
        }
    }

    /// Starts the frame whose header is `h`.
    #[inline]
    fn start(&mut self, h: &[u8; FRAME_HEADER]) -> Frame {
        self.remaining = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        self.frame = Frame {
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            len: self.remaining,
        };
        self.frame
    }
}

impl FrameWatch {
    pub(super) fn new(activity: Arc<Activity>, times_bodies: bool) -> Self {
        Self {
            protocol: Protocol::Detecting(0),
            read: Cursor::default(),
            written: Cursor::default(),
            streams: Streams {
                activity,
                times_bodies,
                incoming: Vec::new(),
                answer: None,
                answer_head: [0; ANSWER_HEAD],
                goaway: None,
                informational_indexed: false,
                opened: false,
                arrears: Arrears::default(),
                request_data: RequestData::None,
                flow: Flow {
                    connection: DEFAULT_WINDOW,
                    initial: DEFAULT_WINDOW,
                    streams: Vec::new(),
                    last_opened: 0,
                    last_processed: u32::MAX,
                    unfollowed: 0,
                    reading: None,
                    entry: Gather::default(),
                    blocked: false,
                },
            },
        }
    }
}

/// The frame watch of a connection, made when its first byte read may begin an HTTP/2
/// preface: an HTTP/1 request whose method does not begin with `P` (all but `POST`,
/// `PUT`, `PATCH`) never costs the allocation of one.
#[derive(Debug)]
pub(super) enum LazyFrameWatch {
    /// Nothing read yet; what the watch is made with.
    Waiting {
        activity: Arc<Activity>,
        times_bodies: bool,
    },
    Watching(Box<FrameWatch>),
}

impl LazyFrameWatch {
    pub(super) fn new(activity: Arc<Activity>, times_bodies: bool) -> Self {
        Self::Waiting {
            activity,
            times_bodies,
        }
    }
}

impl Watch for LazyFrameWatch {
    fn on_read(&mut self, bytes: &[u8]) -> bool {
        match self {
            Self::Watching(watch) => watch.on_read(bytes),
            Self::Waiting {
                activity,
                times_bodies,
            } => {
                let Some(&first) = bytes.first() else {
                    return true;
                };
                if first != PREFACE[0] {
                    return false;
                }
                let mut watch = Box::new(FrameWatch::new(activity.clone(), *times_bodies));
                let watching = watch.on_read(bytes);
                *self = Self::Watching(watch);
                watching
            }
        }
    }

    /// Nothing is followed before the preface is read, as by [`FrameWatch`].
    fn on_written(&mut self, bytes: &[u8]) {
        if let Self::Watching(watch) = self {
            watch.on_written(bytes);
        }
    }
}

impl Watch for FrameWatch {
    /// The client's bytes, as read. Returns `false` once the connection has shown it is
    /// not HTTP/2: there is nothing more to watch.
    fn on_read(&mut self, mut bytes: &[u8]) -> bool {
        if let Protocol::Detecting(seen) = self.protocol {
            let take = (PREFACE.len() - seen).min(bytes.len());
            if bytes[..take] != PREFACE[seen..seen + take] {
                self.protocol = Protocol::Http1;
                return false;
            }
            bytes = &bytes[take..];
            self.protocol = if seen + take == PREFACE.len() {
                self.streams.activity.counts_http2_data();
                Protocol::Http2
            } else {
                Protocol::Detecting(seen + take)
            };
        }
        if self.protocol != Protocol::Http2 {
            return true;
        }
        let streams = &mut self.streams;
        let mut changed = false;
        let mut windows = false;
        let mut data = 0;
        self.read.advance(bytes, |seen| match seen {
            Seen::Header(frame, whole) => {
                windows |= streams.flow.on_client_frame(frame, whole);
                changed |= streams.on_client_frame(frame, whole);
                // One search of the streams followed per DATA frame, none per byte.
                streams.request_data = if frame.kind != DATA || !streams.flow.serves(frame.stream) {
                    RequestData::None
                } else if frame.flags & PADDED != 0 {
                    RequestData::PadLengthNext(frame.len)
                } else {
                    RequestData::Next(frame.len)
                };
            }
            Seen::Payload(SETTINGS | WINDOW_UPDATE, _, payload) => {
                streams.flow.on_client_payload(payload);
                windows = true;
            }
            Seen::Payload(DATA, stream, run) => {
                let n = streams.request_data_in(run);
                if n > 0 {
                    data += n;
                    changed |= streams.on_request_data(stream, n);
                }
            }
            Seen::Payload(..) => {}
            Seen::End(frame) => {
                windows |= streams.flow.on_client_frame_end(frame);
                changed |= streams.on_client_frame_end(frame);
            }
        });
        if data > 0 {
            streams.activity.on_data_read(data);
        }
        if changed {
            streams.publish();
        }
        if windows {
            streams.publish_flow();
        }
        true
    }

    /// The server's bytes, as written.
    fn on_written(&mut self, bytes: &[u8]) {
        if self.protocol != Protocol::Http2 {
            return;
        }
        let streams = &mut self.streams;
        let mut changed = false;
        let mut windows = false;
        let mut data = 0;
        self.written.advance(bytes, |seen| match seen {
            Seen::Header(frame, _) => {
                windows |= streams.flow.on_server_frame(frame);
                if frame.kind == RST_STREAM {
                    changed |= streams.forget(frame.stream);
                } else if frame.kind == HEADERS && streams.times_bodies {
                    streams.begin_answer(frame);
                } else if frame.kind == GOAWAY {
                    streams.goaway = Some(Gather::default());
                }
            }
            Seen::Payload(DATA, _, run) => data += run.len(),
            Seen::Payload(HEADERS, _, run) => changed |= streams.read_answer(run),
            Seen::Payload(GOAWAY, _, run) => {
                if let Some(last) = streams.read_goaway(run) {
                    windows |= streams.flow.close_above(last);
                    changed |= streams.forget_above(last);
                }
            }
            Seen::Payload(..) | Seen::End(_) => {}
        });
        if data > 0 {
            streams.activity.on_data_written(data);
        }
        if changed {
            streams.publish();
        }
        if windows {
            streams.publish_flow();
        }
    }
}

impl Streams {
    /// Follows a client frame's header, `whole` if its payload came with it; whether
    /// the streams still arriving may have changed. Its flags count once its payload is
    /// in, with its header or [apart](Self::on_client_frame_end): a request's headers
    /// trickled after their frame's header are still arriving, and a stream whose
    /// RST_STREAM lacks its error code is not reset (h2 acts on whole frames only).
    fn on_client_frame(&mut self, frame: Frame, whole: bool) -> bool {
        if self.times_bodies {
            match frame.kind {
                // A request whole in one frame that came whole (a GET) is never waited
                // for: no clock read, nothing to track.
                // Nor is one the server ignores, after its GOAWAY.
                HEADERS
                    if frame.stream <= self.flow.last_processed
                        && !(whole && frame.flags & WHOLE_REQUEST == WHOLE_REQUEST)
                        && self.find(frame.stream).is_none() =>
                {
                    // The connection's first headers are part of its opening, timed
                    // from its first byte: beginning them starts no clock again.
                    let opening = if self.opened {
                        None
                    } else {
                        self.activity.request_in_progress()
                    };
                    let started = opening.unwrap_or_else(|| {
                        let now = self.activity.elapsed_nanos();
                        now.saturating_sub(self.arrears.at(now))
                    });
                    self.incoming.push(Incoming {
                        stream: frame.stream,
                        started,
                        data_read: 0,
                        headers_done: false,
                        body_done: false,
                    });
                    if whole {
                        self.on_client_frame_end(frame);
                    }
                    return true;
                }
                _ => {}
            }
        }
        whole && self.on_client_frame_end(frame)
    }

    /// Follows a client frame whose payload is all in: what its flags say ends now, and
    /// a stream it resets is no request any more (and leaves what it owed).
    fn on_client_frame_end(&mut self, frame: Frame) -> bool {
        let headers_done = frame.flags & END_HEADERS != 0;
        match frame.kind {
            HEADERS | CONTINUATION => {
                if headers_done && !self.opened {
                    self.opened = true;
                    self.activity.stop_timing_requests();
                }
            }
            DATA if frame.flags & END_STREAM != 0 => {}
            RST_STREAM => return self.abandon(frame.stream),
            _ => return false,
        }
        if !self.times_bodies {
            return false;
        }
        let Some(incoming) = self.find(frame.stream) else {
            return false;
        };
        match frame.kind {
            // Headers, or trailers: the body ends with them.
            HEADERS => {
                incoming.headers_done = headers_done;
                incoming.body_done |= frame.flags & END_STREAM != 0;
            }
            CONTINUATION => incoming.headers_done = headers_done,
            _ => incoming.body_done = true,
        }
        self.incoming
            .retain(|incoming| !(incoming.headers_done && incoming.body_done));
        true
    }

    /// How much of `run`, a run of the client DATA frame being read, is request data.
    #[inline]
    fn request_data_in(&mut self, run: &[u8]) -> usize {
        let (left, run) = match self.request_data {
            RequestData::None => return 0,
            RequestData::Next(left) => (left, run),
            // A run is never empty; what a padding longer than its frame leaves is
            // nothing (the server refuses such a frame).
            RequestData::PadLengthNext(len) => {
                (len.saturating_sub(1 + u32::from(run[0])), &run[1..])
            }
        };
        let n = run.len().min(left as usize);
        self.request_data = RequestData::Next(left - n as u32);
        n
    }

    /// Counts `n` bytes of request data to `stream`; whether its request is still
    /// arriving, so that what the timer is told may have changed.
    fn on_request_data(&mut self, stream: u32, n: usize) -> bool {
        let Some(incoming) = self.find(stream) else {
            return false;
        };
        incoming.data_read += n as u64;
        true
    }

    fn find(&mut self, stream: u32) -> Option<&mut Incoming> {
        self.incoming
            .iter_mut()
            .find(|incoming| incoming.stream == stream)
    }

    /// Begins reading a server HEADERS frame for whether it answers its stream.
    #[inline]
    fn begin_answer(&mut self, frame: Frame) {
        self.answer = Some(AnswerRead {
            stream: frame.stream,
            skip: match frame.flags & (PADDED | PRIORITY) {
                0 => 0,
                PADDED => 1,
                PRIORITY => 5,
                _ => 6,
            },
            filled: 0,
        });
    }

    /// Reads a run of the server HEADERS frame being written, until its first field
    /// tells whether it answers its stream, which, if its request is still arriving,
    /// is forgotten: its body is no longer held to the request timeout. Whether the
    /// streams still arriving changed.
    #[inline]
    fn read_answer(&mut self, run: &[u8]) -> bool {
        let Some(read) = self.answer else {
            return false;
        };
        // The usual: the block begins this run, which holds its first field, most often
        // a final status from the static table.
        if read.skip == 0 && read.filled == 0 {
            if let Some(first) = run.first()
                && STATIC_STATUSES.contains(first)
            {
                self.answer = None;
                return self.answered(read.stream, Head::Final);
            }
            if let Some(head) = read_head(run.iter().copied(), self.informational_indexed) {
                self.answer = None;
                return self.answered(read.stream, head);
            }
        }
        self.read_answer_apart(run)
    }

    /// [`read_answer`](Self::read_answer) for a block behind padding or priority, or
    /// whose first field comes split across writes.
    #[cold]
    #[inline(never)]
    fn read_answer_apart(&mut self, run: &[u8]) -> bool {
        let Some(read) = &mut self.answer else {
            return false;
        };
        let skip = run.len().min(usize::from(read.skip));
        read.skip -= skip as u8;
        let run = &run[skip..];
        let filled = usize::from(read.filled);
        let gathered = &self.answer_head[..filled];
        let Some(head) = read_head(
            gathered.iter().chain(run).copied(),
            self.informational_indexed,
        ) else {
            // Split across writes: kept until the rest comes.
            let take = run.len().min(ANSWER_HEAD - filled);
            self.answer_head[filled..filled + take].copy_from_slice(&run[..take]);
            read.filled += take as u8;
            if usize::from(read.filled) == ANSWER_HEAD {
                self.answer = None;
            }
            return false;
        };
        let stream = read.stream;
        self.answer = None;
        self.answered(stream, head)
    }

    /// Follows what the first field of the server's header block on `stream` says;
    /// whether the streams still arriving changed.
    #[inline]
    fn answered(&mut self, stream: u32, head: Head) -> bool {
        match head {
            Head::Final => !self.incoming.is_empty() && self.forget(stream),
            Head::Informational { indexed } => {
                self.informational_indexed |= indexed;
                false
            }
            Head::Unknown => false,
        }
    }

    /// Forgets `stream`, which the client has reset; if its request was still arriving,
    /// adds what it owed to the [`Arrears`] of the streams the client opens next.
    /// Whether it was tracked.
    fn abandon(&mut self, stream: u32) -> bool {
        let Some(at) = self
            .incoming
            .iter()
            .position(|incoming| incoming.stream == stream)
        else {
            return false;
        };
        let abandoned = self.incoming.remove(at);
        let Some(limit) = self.activity.deadlines().request else {
            return true;
        };
        let now = self.activity.elapsed_nanos();
        let earned = nanos(
            limit
                .allowance(abandoned.data_read)
                .saturating_sub(limit.base),
        );
        let owed = now.saturating_sub(abandoned.started).saturating_sub(earned);
        if owed > 0 {
            self.arrears = Arrears {
                owed: owed.max(self.arrears.at(now)),
                until: now.saturating_add(nanos(limit.base)),
            };
        }
        true
    }

    /// Forgets `stream`; whether it was tracked.
    fn forget(&mut self, stream: u32) -> bool {
        let before = self.incoming.len();
        self.incoming.retain(|incoming| incoming.stream != stream);
        self.incoming.len() != before
    }

    /// Reads a run of the server's GOAWAY being written: the last stream it processes,
    /// once the 4 bytes that name it are in.
    fn read_goaway(&mut self, mut run: &[u8]) -> Option<u32> {
        let last = self.goaway.as_mut()?.take(4, &mut run)?;
        self.goaway = None;
        Some(u32::from_be_bytes(last) & 0x7fff_ffff)
    }

    /// Forgets the streams above `last`, which the server's GOAWAY says it does not
    /// process: no request it reads. Whether any was tracked.
    fn forget_above(&mut self, last: u32) -> bool {
        let before = self.incoming.len();
        self.incoming.retain(|incoming| incoming.stream <= last);
        self.incoming.len() != before
    }

    /// Tells the timer whether a window holds the server's data back, if that changed.
    fn publish_flow(&mut self) {
        let blocked = self.flow.blocked();
        if blocked != self.flow.blocked {
            self.flow.blocked = blocked;
            self.activity.set_flow_blocked(blocked);
        }
    }

    /// Tells the timer about the stream that has been arriving longest, and the data it
    /// has brought.
    fn publish(&self) {
        let oldest = self
            .incoming
            .iter()
            .min_by_key(|incoming| incoming.started)
            .map(|incoming| (incoming.started, incoming.data_read));
        self.activity.set_stream_request(oldest);
    }
}

impl Flow {
    /// Follows a client frame's header, `whole` if its payload came with it; whether a
    /// window may have changed.
    fn on_client_frame(&mut self, frame: Frame, whole: bool) -> bool {
        self.reading = None;
        self.entry = Gather::default();
        match frame.kind {
            // A new stream from the client: the server may answer on it, unless it said
            // in a GOAWAY that it processes none so high.
            HEADERS if frame.stream > self.last_opened && frame.stream <= self.last_processed => {
                self.last_opened = frame.stream;
                if self.streams.len() < MAX_FOLLOWED {
                    self.streams.push((frame.stream, self.initial));
                } else {
                    self.unfollowed += 1;
                }
                true
            }
            SETTINGS if frame.flags & ACK == 0 => {
                self.reading = Some(frame);
                false
            }
            WINDOW_UPDATE => {
                self.reading = Some(frame);
                false
            }
            RST_STREAM => whole && self.on_client_frame_end(frame),
            _ => false,
        }
    }

    /// Follows a client frame whose payload is all in: a stream it resets is closed
    /// (not at its header: h2 acts on whole frames only). Whether a window may have
    /// changed.
    fn on_client_frame_end(&mut self, frame: Frame) -> bool {
        frame.kind == RST_STREAM && self.close(frame.stream)
    }

    /// Reads a run of the payload of the client frame being read, if it sets windows.
    fn on_client_payload(&mut self, mut payload: &[u8]) {
        let Some(frame) = self.reading else {
            return;
        };
        let size = if frame.kind == SETTINGS { 6 } else { 4 };
        while let Some([a, b, c, d, e, f]) = self.entry.take(size, &mut payload) {
            if frame.kind == SETTINGS {
                if u16::from_be_bytes([a, b]) == INITIAL_WINDOW_SIZE {
                    // Every stream's window moves by the change.
                    let initial = i64::from(u32::from_be_bytes([c, d, e, f]));
                    let delta = initial - self.initial;
                    self.initial = initial;
                    for (_, window) in &mut self.streams {
                        *window += delta;
                    }
                }
            } else {
                let increment = i64::from(u32::from_be_bytes([a, b, c, d]) & 0x7fff_ffff);
                match frame.stream {
                    0 => self.connection += increment,
                    stream => {
                        if let Some(window) = self.window(stream) {
                            *window += increment;
                        }
                    }
                }
            }
        }
    }

    /// Follows a server frame's header; whether a window may have changed.
    fn on_server_frame(&mut self, frame: Frame) -> bool {
        let mut changed = false;
        if frame.kind == DATA && frame.len > 0 {
            self.connection -= i64::from(frame.len);
            if let Some(window) = self.window(frame.stream) {
                *window -= i64::from(frame.len);
            }
            changed = true;
        }
        let ends = matches!(frame.kind, DATA | HEADERS) && frame.flags & END_STREAM != 0;
        if ends || frame.kind == RST_STREAM {
            changed |= self.close(frame.stream);
        }
        changed
    }

    /// Whether the server may still send on `stream`, or may, for all the streams
    /// followed tell: while one opened beyond them is open, any may be it.
    fn serves(&self, stream: u32) -> bool {
        self.unfollowed > 0 || self.streams.iter().any(|(id, _)| *id == stream)
    }

    fn window(&mut self, stream: u32) -> Option<&mut i64> {
        self.streams
            .iter_mut()
            .find(|(id, _)| *id == stream)
            .map(|(_, window)| window)
    }

    /// The server processes no stream above `last`, as its GOAWAY says: it sends on
    /// none of those. Whether a window may have changed. (A stream opened beyond those
    /// followed, above `last`, is not known to be one of them, and still counts.)
    fn close_above(&mut self, last: u32) -> bool {
        self.last_processed = last;
        let before = self.streams.len();
        self.streams.retain(|(id, _)| *id <= last);
        self.streams.len() != before
    }

    /// The server sends no more on `stream`; whether it was followed. One that was not
    /// is taken for an unfollowed one.
    fn close(&mut self, stream: u32) -> bool {
        let before = self.streams.len();
        self.streams.retain(|(id, _)| *id != stream);
        let followed = self.streams.len() != before;
        if !followed {
            self.unfollowed = self.unfollowed.saturating_sub(1);
        }
        followed
    }

    /// Whether the connection's window, or an open stream's, is at zero or below.
    fn blocked(&self) -> bool {
        self.connection <= 0 || self.streams.iter().any(|(_, window)| *window <= 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut bytes = len.to_be_bytes()[1..].to_vec();
        bytes.extend([kind, flags]);
        bytes.extend(stream.to_be_bytes());
        bytes.extend(payload);
        bytes
    }

    /// A connection's activity, its requests timed.
    fn activity() -> Arc<Activity> {
        use crate::timeout::{Deadlines, RequestLimit};
        Arc::new(Activity::with_deadlines(Deadlines {
            request: Some(RequestLimit {
                base: std::time::Duration::from_secs(10),
                min_rate: None,
            }),
            ..Deadlines::default()
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn only_requests_still_arriving_are_tracked() {
        let mut watch = FrameWatch::new(activity(), true);
        let mut bytes = PREFACE.to_vec();
        // A GET, whole in its first frame; then a POST whose body is still coming.
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, b"h"));
        assert!(watch.on_read(&bytes));
        assert!(watch.streams.incoming.is_empty());
        assert!(watch.on_read(&frame(HEADERS, END_HEADERS, 3, b"h")));
        assert_eq!(watch.streams.incoming.len(), 1);
        assert!(watch.on_read(&frame(DATA, END_STREAM, 3, b"body")));
        assert!(watch.streams.incoming.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_padded_bodys_padding_is_no_request_data_wherever_its_reads_split() {
        let mut opening = PREFACE.to_vec();
        opening.extend(frame(HEADERS, END_HEADERS, 1, b"h"));
        // "body" behind a pad length of 3 and its padding, then "more" unpadded.
        let mut body = frame(DATA, PADDED, 1, b"\x03body\0\0\0");
        body.extend(frame(DATA, 0, 1, b"more"));
        for split in 0..=body.len() {
            let mut watch = FrameWatch::new(activity(), true);
            watch.on_read(&opening);
            watch.on_read(&body[..split]);
            watch.on_read(&body[split..]);
            assert_eq!(watch.streams.incoming[0].data_read, 8, "split at {split}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_answered_is_no_longer_tracked_but_one_told_to_continue_is() {
        // `:status` as h2 writes it: 100 written out (Huffman) and put in the table, then
        // from the table; 200 from the static table, after a table size update (4096).
        let continue_written = [0x48, 0x82, 0x08, 0x01];
        let from_the_table = [0xbe];
        let ok_after_size_update = [0x3f, 0xe1, 0x1f, 0x88];
        let mut client = PREFACE.to_vec();
        client.extend(frame(HEADERS, END_HEADERS, 1, b"h"));
        client.extend(frame(HEADERS, END_HEADERS, 3, b"h"));
        let mut server = frame(HEADERS, END_HEADERS, 1, &continue_written);
        server.extend(frame(HEADERS, END_HEADERS, 3, &from_the_table));
        let mut watch = FrameWatch::new(activity(), true);
        watch.on_read(&client);
        watch.on_written(&server);
        let tracked = |watch: &FrameWatch| -> Vec<u32> {
            watch
                .streams
                .incoming
                .iter()
                .map(|incoming| incoming.stream)
                .collect()
        };
        assert_eq!(tracked(&watch), [1, 3]);
        // The answers, split anywhere.
        server.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &[0, 0x88]));
        server.extend(frame(HEADERS, END_HEADERS, 3, &ok_after_size_update));
        for split in 0..server.len() {
            let mut watch = FrameWatch::new(activity(), true);
            watch.on_read(&client);
            for part in [&server[..split], &server[split..]] {
                watch.on_written(part);
            }
            assert_eq!(tracked(&watch), [0; 0], "split at {split}");
        }
        // The same with 200 in the padded frame, after the padding's length.
        let mut watch = FrameWatch::new(activity(), true);
        watch.on_read(&client);
        watch.on_written(&frame(HEADERS, END_HEADERS | PADDED, 1, &[1, 0x88, 0]));
        assert_eq!(watch.streams.incoming.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_from_the_static_table_answers_where_it_lies_or_split() {
        // 200 and 404 from the static table, each followed by another field; the
        // answer's first byte at the start of a write, after its frame's header in the
        // same write, or after a split within the block.
        let mut client = PREFACE.to_vec();
        client.extend(frame(HEADERS, END_HEADERS, 1, b"h"));
        client.extend(frame(HEADERS, END_HEADERS, 3, b"h"));
        client.extend(frame(HEADERS, END_HEADERS, 5, b"h"));
        let mut server = frame(HEADERS, END_HEADERS, 1, &[0x88, 0x0f, 0x0d, 0x01, b'6']);
        server.extend(frame(DATA, 0, 1, b"hello"));
        server.extend(frame(HEADERS, END_HEADERS, 3, &[0x8d, 0x5f]));
        for split in 0..=server.len() {
            let mut watch = FrameWatch::new(activity(), true);
            watch.on_read(&client);
            for part in [&server[..split], &server[split..]] {
                watch.on_written(part);
            }
            let tracked: Vec<u32> = watch
                .streams
                .incoming
                .iter()
                .map(|incoming| incoming.stream)
                .collect();
            assert_eq!(tracked, [5], "split at {split}");
            assert!(watch.streams.answer.is_none(), "split at {split}");
        }
    }

    #[test]
    fn a_response_head_is_read_from_its_first_field() {
        let read = |block: &[u8], informational_indexed| {
            read_head(block.iter().copied(), informational_indexed)
        };
        let informational = |indexed| Some(Head::Informational { indexed });
        // 404 from the static table; 201 and 103 written out (Huffman, plain).
        assert_eq!(read(&[0x8d], false), Some(Head::Final));
        assert_eq!(read(&[0x48, 0x82, 0x10, 0x03], false), Some(Head::Final));
        assert_eq!(
            read(&[0x08, 0x03, b'1', b'0', b'3'], false),
            informational(false)
        );
        assert_eq!(
            read(&[0x18, 0x03, b'1', b'0', b'3'], false),
            informational(false)
        );
        assert_eq!(read(&[0x48, 0x82, 0x08, 0x01], false), informational(true));
        // From the dynamic table: a final status unless a 1xx was put there.
        assert_eq!(read(&[0xc0], false), Some(Head::Final));
        assert_eq!(read(&[0xc0], true), Some(Head::Unknown));
        // Trailers (a name written out): no status.
        assert_eq!(read(&[0x40, 0x0b], false), Some(Head::Unknown));
        // Too short to tell.
        assert_eq!(read(&[0x3f, 0xe1], false), None);
        assert_eq!(read(&[0x48, 0x82], false), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_is_made_only_for_what_may_be_a_preface() {
        // Nothing read, or only written: still waiting.
        let mut watch = LazyFrameWatch::new(activity(), true);
        watch.on_written(b"HTTP/1.1 200 OK\r\n");
        assert!(watch.on_read(b""));
        assert!(matches!(watch, LazyFrameWatch::Waiting { .. }));
        // HTTP/1 that says so at its first byte: done, with no watch made.
        assert!(!watch.on_read(b"GET / HTTP/1.1\r\n"));
        assert!(matches!(watch, LazyFrameWatch::Waiting { .. }));
        // HTTP/1 whose first byte is the preface's: the watch it makes ends at the next.
        let mut watch = LazyFrameWatch::new(activity(), true);
        assert!(watch.on_read(b"P"));
        assert!(matches!(watch, LazyFrameWatch::Watching(_)));
        assert!(!watch.on_read(b"OST / HTTP/1.1\r\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_made_at_the_first_byte_follows_the_whole_connection() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(HEADERS, END_HEADERS, 1, b"h"));
        for split in 0..bytes.len() {
            let mut watch = LazyFrameWatch::new(activity(), true);
            for part in [&bytes[..split], &bytes[split..]] {
                assert!(watch.on_read(part), "split at {split}");
            }
            let LazyFrameWatch::Watching(watch) = watch else {
                panic!("no watch made, split at {split}");
            };
            assert_eq!(watch.protocol, Protocol::Http2, "split at {split}");
            assert_eq!(watch.streams.incoming.len(), 1, "split at {split}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_clients_windows_are_followed_and_tell_when_they_hold_data_back() {
        let window = |increment: u32| increment.to_be_bytes();
        let mut client = PREFACE.to_vec();
        // Streams get a window of 10; the connection's grows by 100.
        client.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 10]));
        client.extend(frame(WINDOW_UPDATE, 0, 0, &window(100)));
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, b"h"));
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, b"h"));
        for split in 0..client.len() {
            let activity = activity();
            let mut watch = FrameWatch::new(activity.clone(), true);
            for part in [&client[..split], &client[split..]] {
                watch.on_read(part);
            }
            let flow = &watch.streams.flow;
            assert_eq!(flow.connection, DEFAULT_WINDOW + 100, "split at {split}");
            assert_eq!(flow.streams, [(1, 10), (3, 10)], "split at {split}");
            assert!(!watch.streams.flow.blocked, "split at {split}");

            // Stream 1's window spent: the data waits on the client.
            watch.on_written(&frame(DATA, 0, 1, &[0; 10]));
            assert_eq!(watch.streams.flow.streams, [(1, 0), (3, 10)]);
            assert!(watch.streams.flow.blocked);
            // Reopened, then ended by the server; stream 3 reset by the client.
            watch.on_read(&frame(WINDOW_UPDATE, 0, 1, &window(5)));
            assert!(!watch.streams.flow.blocked);
            watch.on_written(&frame(DATA, END_STREAM, 1, &[0; 5]));
            watch.on_read(&frame(RST_STREAM, 0, 3, &[0, 0, 0, 8]));
            // Late trailers on stream 1 open nothing.
            watch.on_read(&frame(HEADERS, END_HEADERS | END_STREAM, 1, b"h"));
            assert!(watch.streams.flow.streams.is_empty());
            assert_eq!(watch.streams.flow.connection, DEFAULT_WINDOW + 85);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_reset_counts_once_its_error_code_is_in() {
        let mut client = PREFACE.to_vec();
        client.extend(frame(HEADERS, END_HEADERS, 1, b"h"));
        let reset = frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]);
        for split in 0..reset.len() {
            let mut watch = FrameWatch::new(activity(), true);
            watch.on_read(&client);
            // The frame's header, or part of it: h2 resets nothing yet.
            watch.on_read(&reset[..split]);
            assert_eq!(watch.streams.incoming.len(), 1, "split at {split}");
            assert_eq!(watch.streams.flow.streams.len(), 1, "split at {split}");
            watch.on_read(&reset[split..]);
            assert!(watch.streams.incoming.is_empty(), "split at {split}");
            assert!(watch.streams.flow.streams.is_empty(), "split at {split}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_the_client_abandons_leaves_what_it_owed_to_the_streams_it_opens_next() {
        use std::time::Duration;
        let secs = |n: u64| nanos(Duration::from_secs(n));
        let started = |watch: &FrameWatch| watch.streams.incoming[0].started;
        let mut watch = FrameWatch::new(activity(), true);
        let mut opening = PREFACE.to_vec();
        opening.extend(frame(HEADERS, END_HEADERS, 1, b"h"));
        watch.on_read(&opening);
        // Reset 9 s in, its body never sent: the next stream, opened 1 s later, has what
        // was left of the 10 s, as does any opened within 10 s of the reset.
        tokio::time::advance(Duration::from_secs(9)).await;
        watch.on_read(&frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]));
        assert!(watch.streams.incoming.is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        watch.on_read(&frame(HEADERS, END_HEADERS, 3, b"h"));
        assert_eq!(started(&watch), secs(1));
        // Whole: it owes nothing, and what the first owed holds still.
        watch.on_read(&frame(DATA, END_STREAM, 3, b"body"));
        tokio::time::advance(Duration::from_secs(8)).await;
        watch.on_read(&frame(HEADERS, END_HEADERS, 5, b"h"));
        assert_eq!(started(&watch), secs(9));
        // Reset at once, its 9 s owed again: the clock runs on across the chain.
        watch.on_read(&frame(RST_STREAM, 0, 5, &[0, 0, 0, 8]));
        watch.on_read(&frame(HEADERS, END_HEADERS, 7, b"h"));
        assert_eq!(started(&watch), secs(9));
        // A server's reset is not the client's abandoning: nothing more is owed.
        tokio::time::advance(Duration::from_secs(1)).await;
        watch.on_written(&frame(RST_STREAM, 0, 7, &[0, 0, 0, 2]));
        // The request timeout after the last reset, the next stream starts afresh.
        tokio::time::advance(Duration::from_secs(9)).await;
        watch.on_read(&frame(HEADERS, END_HEADERS, 9, b"h"));
        assert_eq!(started(&watch), secs(28));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_opened_beyond_those_followed_is_served_until_it_closes() {
        // Streams 1, 3, ...: one more than are followed.
        let (first, beyond) = (1, 2 * MAX_FOLLOWED as u32 + 1);
        let mut client = PREFACE.to_vec();
        for stream in (first..=beyond).step_by(2) {
            client.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, b"h"));
        }
        let mut watch = FrameWatch::new(activity(), true);
        watch.on_read(&client);
        // The first stream is over; the one beyond those followed may be it.
        watch.on_written(&frame(HEADERS, END_HEADERS | END_STREAM, first, &[0x88]));
        assert!(watch.streams.flow.serves(first));
        // Once the one beyond is reset, DATA to the first is no request data.
        watch.on_written(&frame(RST_STREAM, 0, beyond, &[0, 0, 0, 7]));
        assert!(!watch.streams.flow.serves(first));
        assert!(!watch.streams.flow.serves(beyond));
    }

    #[tokio::test(start_paused = true)]
    async fn streams_above_the_servers_last_goaway_are_neither_tracked_nor_followed() {
        let mut client = PREFACE.to_vec();
        client.extend(frame(HEADERS, END_HEADERS, 1, b"h"));
        client.extend(frame(HEADERS, END_HEADERS, 3, b"h"));
        let tracked = |watch: &FrameWatch| -> (Vec<u32>, Vec<u32>) {
            let incoming = watch.streams.incoming.iter().map(|i| i.stream).collect();
            let followed = watch.streams.flow.streams.iter().map(|s| s.0).collect();
            (incoming, followed)
        };
        // A graceful close's first GOAWAY names the highest stream there can be.
        let first = frame(GOAWAY, 0, 0, &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        // The last names stream 1, then its error code and some debug data.
        let last = frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0, b'b', b'y', b'e']);
        for split in 0..last.len() {
            let mut watch = FrameWatch::new(activity(), true);
            watch.on_read(&client);
            watch.on_written(&first);
            assert_eq!(tracked(&watch), (vec![1, 3], vec![1, 3]));
            for part in [&last[..split], &last[split..]] {
                watch.on_written(part);
            }
            assert_eq!(tracked(&watch), (vec![1], vec![1]), "split at {split}");
            // A stream opened now is ignored too.
            watch.on_read(&frame(HEADERS, END_HEADERS, 5, b"h"));
            assert_eq!(tracked(&watch), (vec![1], vec![1]), "split at {split}");
        }
    }

    #[test]
    fn a_cursor_finds_frames_split_anywhere_and_ends_each_once_its_payload_is_in() {
        let mut stream = frame(DATA, 0, 1, b"hello");
        stream.extend(frame(SETTINGS, ACK, 0, b""));
        stream.extend(frame(HEADERS, END_HEADERS, 3, b"hh"));
        stream.extend(frame(DATA, END_STREAM, 1, b"!"));
        let frames = [
            (DATA, 0),
            (SETTINGS, ACK),
            (HEADERS, END_HEADERS),
            (DATA, END_STREAM),
        ];
        // The DATA bytes in once each frame's payload is.
        let data_through = [5, 5, 5, 6];
        for split in 0..stream.len() {
            let mut cursor = Cursor::default();
            let mut headers = Vec::new();
            // A frame's flags take effect once: at its header if its payload came with
            // it, else at its end, once the payload is in.
            let mut in_force = Vec::new();
            let mut data = 0;
            for part in [&stream[..split], &stream[split..]] {
                cursor.advance(part, |seen| match seen {
                    Seen::Header(frame, whole) => {
                        headers.push((frame.kind, frame.flags));
                        if whole {
                            in_force.push((frame.kind, frame.flags));
                        }
                    }
                    Seen::Payload(DATA, _, run) => data += run.len(),
                    Seen::Payload(..) => {}
                    Seen::End(frame) => {
                        assert_eq!(data, data_through[headers.len() - 1], "split at {split}");
                        in_force.push((frame.kind, frame.flags));
                    }
                });
            }
            assert_eq!(headers, frames, "split at {split}");
            assert_eq!(in_force, frames, "split at {split}");
            assert_eq!(data, 6, "split at {split}");
        }
    }
}
