//! The on-disk byte layout: segment headers, batch frames, records and index entries.
//!
//! Pure codecs: functions take and return buffers and never do I/O. `docs/format.md` describes
//! the same layout for people; keep the two in step. Every field is little-endian `u32` or `u64`.
//!
//! A batch frame is `header | records | trailer`. Its CRC-32C covers the frame length and every
//! byte after the CRC field, but not the base offset: the writer assigns offsets after the
//! caller has encoded and checksummed the batch (on the caller's thread), and recovery checks
//! base offsets by their sequence instead.

use std::ops::Range;

use bytes::Bytes;

/// `"HRLDSEG1"` read as a little-endian `u64`: the first bytes of every segment file.
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"HRLDSEG1");
/// Version of the segment layout.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes of the segment header: magic, base offset, version, CRC.
pub const SEGMENT_HEADER_BYTES: u64 = 24;

/// Version of the batch frame layout, the first checksummed field of a frame.
pub const FRAME_FORMAT: u32 = 1;
/// `"HEND"` as a little-endian `u32`: the last bytes of every batch frame.
pub const FRAME_END_MAGIC: u32 = u32::from_le_bytes(*b"HEND");
/// Bytes before the first record: base offset, length, CRC, format, count, max timestamp.
pub const FRAME_HEADER_BYTES: usize = 32;
/// Bytes after the last record: the length again and the end magic.
pub const FRAME_TRAILER_BYTES: usize = 8;
/// Bytes a frame adds around its records.
pub const FRAME_OVERHEAD_BYTES: usize = FRAME_HEADER_BYTES + FRAME_TRAILER_BYTES;
/// Fixed bytes of one record around its key, headers and payload.
pub const RECORD_OVERHEAD_BYTES: usize = 4 + 8 + 4 + 4 + 4;
/// The key length that means "no key".
pub const NO_KEY: u32 = u32::MAX;

/// Bytes of one offset index entry: relative offset, position.
pub const OFFSET_INDEX_ENTRY_BYTES: usize = 8;
/// Bytes of one time index entry: timestamp, relative offset, position.
pub const TIME_INDEX_ENTRY_BYTES: usize = 16;
/// Bytes of an index file's trailer: the segment's max timestamp, entry count, CRC.
pub const INDEX_TRAILER_BYTES: usize = 16;

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("slice of 4 bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("slice of 8 bytes"))
}

/// Encodes a segment header.
pub fn encode_segment_header(base_offset: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
    header[8..16].copy_from_slice(&base_offset.to_le_bytes());
    header[16..20].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Decodes a segment header; `None` when it is not a valid header.
pub fn decode_segment_header(header: &[u8]) -> Option<u64> {
    if header.len() < SEGMENT_HEADER_BYTES as usize
        || read_u64(header, 0) != SEGMENT_MAGIC
        || read_u32(header, 16) != SEGMENT_VERSION
        || read_u32(header, 20) != crc32c::crc32c(&header[0..20])
    {
        return None;
    }
    Some(read_u64(header, 8))
}

/// Limits a batch is checked against while it is built and when it is appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Largest encoded record (key, headers, payload and the record's own fields).
    pub record_bytes_max: u32,
    /// Largest encoded batch frame.
    pub batch_bytes_max: u32,
    /// Most records in one batch.
    pub batch_records_max: u32,
}

/// One record to encode. Headers are name/value byte pairs; the log gives them no meaning.
#[derive(Debug, Clone, Copy)]
pub struct RecordInput<'a> {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub key: Option<&'a [u8]>,
    pub headers: &'a [(&'a [u8], &'a [u8])],
    pub payload: &'a [u8],
}

/// Why a record or batch cannot be encoded or appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record {index} is {bytes} bytes encoded; the limit (record_bytes_max) is {max}")]
    RecordTooLarge { index: u32, bytes: u64, max: u32 },
    #[error("the batch would be {bytes} bytes encoded; the limit (batch_bytes_max) is {max}")]
    BatchTooLarge { bytes: u64, max: u32 },
    #[error("the batch would hold {records} records; the limit (batch_records_max) is {max}")]
    TooManyRecords { records: u64, max: u32 },
    #[error("a batch needs at least one record")]
    Empty,
    #[error("a header name or value of {bytes} bytes does not fit a u32 length")]
    FieldTooLarge { bytes: u64 },
}

/// Builds one batch frame, encoding records straight into the frame buffer.
#[derive(Debug)]
pub struct BatchBuilder {
    buffer: Vec<u8>,
    record_count: u32,
    max_timestamp_ms: u64,
    limits: BatchLimits,
}

/// A finished batch frame: checksummed, waiting only for its base offset.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub(crate) bytes: Vec<u8>,
    pub(crate) record_count: u32,
    pub(crate) max_timestamp_ms: u64,
}

impl EncodedBatch {
    /// Records in the batch.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Bytes of the encoded frame.
    pub fn encoded_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The largest record timestamp in the batch.
    pub fn max_timestamp_ms(&self) -> u64 {
        self.max_timestamp_ms
    }
}

impl BatchBuilder {
    /// An empty batch that will enforce `limits`.
    pub fn new(limits: BatchLimits) -> Self {
        Self::with_capacity(limits, 4096)
    }

    /// An empty batch with room for `capacity_bytes` before it reallocates.
    pub fn with_capacity(limits: BatchLimits, capacity_bytes: usize) -> Self {
        let mut buffer = Vec::with_capacity(capacity_bytes.max(FRAME_OVERHEAD_BYTES));
        buffer.resize(FRAME_HEADER_BYTES, 0);
        Self {
            buffer,
            record_count: 0,
            max_timestamp_ms: 0,
            limits,
        }
    }

    /// Records added so far.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// True when no record was added.
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes the frame would have if finished now.
    pub fn encoded_bytes(&self) -> usize {
        self.buffer.len() + FRAME_TRAILER_BYTES
    }

    /// Adds a record. On error the batch is unchanged.
    pub fn push(&mut self, record: RecordInput<'_>) -> Result<(), BatchError> {
        self.push_with(record.timestamp_ms, record.key, record.headers, |buffer| {
            buffer.extend_from_slice(record.payload)
        })
    }

    /// Adds a record whose payload `write_payload` appends to the frame buffer, so a caller can
    /// serialize straight into the batch without an intermediate copy. On error the batch is
    /// unchanged.
    pub fn push_with(
        &mut self,
        timestamp_ms: u64,
        key: Option<&[u8]>,
        headers: &[(&[u8], &[u8])],
        write_payload: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), BatchError> {
        let index = self.record_count;
        if u64::from(index) + 1 > u64::from(self.limits.batch_records_max) {
            return Err(BatchError::TooManyRecords {
                records: u64::from(index) + 1,
                max: self.limits.batch_records_max,
            });
        }
        let start = self.buffer.len();
        let result = self.encode_record(timestamp_ms, key, headers, write_payload);
        let record_bytes = (self.buffer.len() - start) as u64;
        let batch_bytes = (self.buffer.len() + FRAME_TRAILER_BYTES) as u64;
        let error = match result {
            Err(error) => Some(error),
            Ok(()) if record_bytes > u64::from(self.limits.record_bytes_max) => {
                Some(BatchError::RecordTooLarge {
                    index,
                    bytes: record_bytes,
                    max: self.limits.record_bytes_max,
                })
            }
            Ok(()) if batch_bytes > u64::from(self.limits.batch_bytes_max) => {
                Some(BatchError::BatchTooLarge {
                    bytes: batch_bytes,
                    max: self.limits.batch_bytes_max,
                })
            }
            Ok(()) => None,
        };
        if let Some(error) = error {
            self.buffer.truncate(start);
            return Err(error);
        }
        self.record_count += 1;
        self.max_timestamp_ms = self.max_timestamp_ms.max(timestamp_ms);
        Ok(())
    }

    fn encode_record(
        &mut self,
        timestamp_ms: u64,
        key: Option<&[u8]>,
        headers: &[(&[u8], &[u8])],
        write_payload: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), BatchError> {
        let length_at = self.buffer.len();
        self.buffer.extend_from_slice(&[0; 4]);
        self.buffer.extend_from_slice(&timestamp_ms.to_le_bytes());
        match key {
            Some(key) => {
                let length = field_length(key.len())?;
                if length == NO_KEY {
                    return Err(BatchError::FieldTooLarge {
                        bytes: key.len() as u64,
                    });
                }
                self.buffer.extend_from_slice(&length.to_le_bytes());
                self.buffer.extend_from_slice(key);
            }
            None => self.buffer.extend_from_slice(&NO_KEY.to_le_bytes()),
        }
        let headers_at = self.buffer.len();
        self.buffer.extend_from_slice(&[0; 4]);
        for (name, value) in headers {
            self.buffer
                .extend_from_slice(&field_length(name.len())?.to_le_bytes());
            self.buffer.extend_from_slice(name);
            self.buffer
                .extend_from_slice(&field_length(value.len())?.to_le_bytes());
            self.buffer.extend_from_slice(value);
        }
        let headers_length = field_length(self.buffer.len() - headers_at - 4)?;
        self.buffer[headers_at..headers_at + 4].copy_from_slice(&headers_length.to_le_bytes());
        let payload_at = self.buffer.len();
        self.buffer.extend_from_slice(&[0; 4]);
        write_payload(&mut self.buffer);
        let payload_length = field_length(self.buffer.len() - payload_at - 4)?;
        self.buffer[payload_at..payload_at + 4].copy_from_slice(&payload_length.to_le_bytes());
        let record_length = field_length(self.buffer.len() - length_at - 4)?;
        self.buffer[length_at..length_at + 4].copy_from_slice(&record_length.to_le_bytes());
        Ok(())
    }

    /// Seals the frame: writes its header and trailer and computes its checksum.
    pub fn finish(mut self) -> Result<EncodedBatch, BatchError> {
        if self.record_count == 0 {
            return Err(BatchError::Empty);
        }
        let frame_length = self.buffer.len() + FRAME_TRAILER_BYTES;
        // The builder never lets a batch pass batch_bytes_max, itself a u32.
        let frame_length =
            u32::try_from(frame_length).expect("frame length checked against a u32 limit");
        self.buffer.extend_from_slice(&frame_length.to_le_bytes());
        self.buffer
            .extend_from_slice(&FRAME_END_MAGIC.to_le_bytes());
        let header = &mut self.buffer[..FRAME_HEADER_BYTES];
        header[8..12].copy_from_slice(&frame_length.to_le_bytes());
        header[16..20].copy_from_slice(&FRAME_FORMAT.to_le_bytes());
        header[20..24].copy_from_slice(&self.record_count.to_le_bytes());
        header[24..32].copy_from_slice(&self.max_timestamp_ms.to_le_bytes());
        let crc = frame_crc(&self.buffer);
        self.buffer[12..16].copy_from_slice(&crc.to_le_bytes());
        Ok(EncodedBatch {
            bytes: self.buffer,
            record_count: self.record_count,
            max_timestamp_ms: self.max_timestamp_ms,
        })
    }
}

fn field_length(length: usize) -> Result<u32, BatchError> {
    u32::try_from(length).map_err(|_| BatchError::FieldTooLarge {
        bytes: length as u64,
    })
}

/// The checksum of a whole frame: its length field and everything after the CRC field.
fn frame_crc(frame: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&frame[8..12]);
    crc32c::crc32c_append(crc, &frame[16..])
}

/// Writes `base_offset` into a frame's header (the one field the checksum leaves out).
pub(crate) fn set_base_offset(frame: &mut [u8], base_offset: u64) {
    frame[0..8].copy_from_slice(&base_offset.to_le_bytes());
}

/// What a valid frame's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    pub base_offset: u64,
    pub frame_bytes: u32,
    pub record_count: u32,
    pub max_timestamp_ms: u64,
}

impl FrameInfo {
    /// One past the last offset in the frame.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The bytes end before the frame does: at the end of a file this is a torn write.
    #[error("frame incomplete: need {need} bytes, have {have}")]
    Incomplete { need: u64, have: u64 },
    /// The bytes are a whole frame's worth but not a valid frame.
    #[error("frame corrupt: {reason}")]
    Corrupt { reason: &'static str },
}

/// Checks the frame at the start of `bytes` (length, trailer, checksum, record layout) and
/// returns its header. `frame_bytes_max` bounds the length field, so garbage never makes the
/// caller read gigabytes. Never panics on any input.
pub fn check_frame(bytes: &[u8], frame_bytes_max: u32) -> Result<FrameInfo, FrameError> {
    let have = bytes.len() as u64;
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::Incomplete {
            need: FRAME_HEADER_BYTES as u64,
            have,
        });
    }
    let frame_bytes = read_u32(bytes, 8);
    if (frame_bytes as usize) < FRAME_OVERHEAD_BYTES + RECORD_OVERHEAD_BYTES {
        return Err(FrameError::Corrupt {
            reason: "length field smaller than the smallest frame",
        });
    }
    if frame_bytes > frame_bytes_max {
        return Err(FrameError::Corrupt {
            reason: "length field larger than the largest frame",
        });
    }
    if u64::from(frame_bytes) > have {
        return Err(FrameError::Incomplete {
            need: u64::from(frame_bytes),
            have,
        });
    }
    let frame = &bytes[..frame_bytes as usize];
    let trailer = frame.len() - FRAME_TRAILER_BYTES;
    if read_u32(frame, trailer) != frame_bytes || read_u32(frame, trailer + 4) != FRAME_END_MAGIC {
        return Err(FrameError::Corrupt {
            reason: "trailer does not match the header",
        });
    }
    if read_u32(frame, 12) != frame_crc(frame) {
        return Err(FrameError::Corrupt {
            reason: "checksum mismatch",
        });
    }
    if read_u32(frame, 16) != FRAME_FORMAT {
        return Err(FrameError::Corrupt {
            reason: "unknown frame format",
        });
    }
    let info = FrameInfo {
        base_offset: read_u64(frame, 0),
        frame_bytes,
        record_count: read_u32(frame, 20),
        max_timestamp_ms: read_u64(frame, 24),
    };
    // The checksum says these bytes are what a writer wrote; still check the record layout so a
    // bug or a CRC collision can never make a reader index out of bounds.
    let mut records = 0u32;
    let mut iterator = RecordIter::new(&frame[FRAME_HEADER_BYTES..trailer]);
    while let Some(record) = iterator.next_raw() {
        record?;
        records += 1;
    }
    if records != info.record_count || records == 0 {
        return Err(FrameError::Corrupt {
            reason: "record count does not match the records",
        });
    }
    Ok(info)
}

/// The byte ranges of one record inside a frame's record area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawRecord {
    pub timestamp_ms: u64,
    pub key: Option<Range<usize>>,
    pub headers: Range<usize>,
    pub payload: Range<usize>,
}

/// Walks the records of a frame's record area, checking every length against the bounds.
#[derive(Debug)]
pub(crate) struct RecordIter<'a> {
    area: &'a [u8],
    position: usize,
}

impl<'a> RecordIter<'a> {
    pub(crate) fn new(area: &'a [u8]) -> Self {
        Self { area, position: 0 }
    }

    fn take_length(&self, at: usize, end: usize) -> Result<usize, FrameError> {
        if at + 4 > end {
            return Err(FrameError::Corrupt {
                reason: "record field runs past its record",
            });
        }
        Ok(read_u32(self.area, at) as usize)
    }

    pub(crate) fn next_raw(&mut self) -> Option<Result<RawRecord, FrameError>> {
        if self.position >= self.area.len() {
            return None;
        }
        let result = self.decode_at(self.position);
        match &result {
            Ok((_, end)) => self.position = *end,
            Err(_) => self.position = self.area.len(),
        }
        Some(result.map(|(record, _)| record))
    }

    fn decode_at(&self, start: usize) -> Result<(RawRecord, usize), FrameError> {
        let past = |reason| FrameError::Corrupt { reason };
        let record_length = self.take_length(start, self.area.len())?;
        let end = start
            .checked_add(4 + record_length)
            .filter(|end| *end <= self.area.len())
            .ok_or(past("record runs past its frame"))?;
        let mut at = start + 4;
        if at + 8 > end {
            return Err(past("record too short for its timestamp"));
        }
        let timestamp_ms = read_u64(self.area, at);
        at += 8;
        let key_length = self.take_length(at, end)?;
        at += 4;
        let key = if key_length == NO_KEY as usize {
            None
        } else {
            let range = at..at
                .checked_add(key_length)
                .filter(|e| *e <= end)
                .ok_or(past("key runs past its record"))?;
            at = range.end;
            Some(range)
        };
        let headers_length = self.take_length(at, end)?;
        at += 4;
        let headers = at..at
            .checked_add(headers_length)
            .filter(|e| *e <= end)
            .ok_or(past("headers run past their record"))?;
        check_headers(&self.area[headers.clone()])?;
        at = headers.end;
        let payload_length = self.take_length(at, end)?;
        at += 4;
        let payload = at..at
            .checked_add(payload_length)
            .filter(|e| *e == end)
            .ok_or(past("payload does not end its record"))?;
        Ok((
            RawRecord {
                timestamp_ms,
                key,
                headers,
                payload,
            },
            end,
        ))
    }
}

fn check_headers(block: &[u8]) -> Result<(), FrameError> {
    let mut at = 0usize;
    while at < block.len() {
        for _ in 0..2 {
            if at + 4 > block.len() {
                return Err(FrameError::Corrupt {
                    reason: "header length runs past the header block",
                });
            }
            let length = read_u32(block, at) as usize;
            at = at
                .checked_add(4 + length)
                .filter(|end| *end <= block.len())
                .ok_or(FrameError::Corrupt {
                    reason: "header runs past the header block",
                })?;
        }
    }
    Ok(())
}

/// A record's headers, kept encoded; iterate them with [`Headers::iter`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(Bytes);

impl std::fmt::Debug for Headers {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_list()
            .entries(self.iter().map(|(name, value)| {
                (
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(value),
                )
            }))
            .finish()
    }
}

impl Headers {
    /// The name/value pairs in the order they were written.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let block = &self.0[..];
        let mut at = 0usize;
        std::iter::from_fn(move || {
            if at >= block.len() {
                return None;
            }
            // check_frame validated the block before any Headers value was made from it.
            let name_length = read_u32(block, at) as usize;
            let name = &block[at + 4..at + 4 + name_length];
            at += 4 + name_length;
            let value_length = read_u32(block, at) as usize;
            let value = &block[at + 4..at + 4 + value_length];
            at += 4 + value_length;
            Some((name, value))
        })
    }

    /// The first value of header `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter()
            .find(|(candidate, _)| *candidate == name)
            .map(|(_, value)| value)
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A record read back from the log. Its byte fields share one buffer with the rest of the read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    /// Milliseconds since the Unix epoch, as given to the append.
    pub timestamp_ms: u64,
    pub key: Option<Bytes>,
    pub headers: Headers,
    pub payload: Bytes,
}

/// Decodes the records of a frame that `check_frame` accepted. `frame` must be exactly the frame.
pub(crate) fn decode_records(
    frame: &Bytes,
    info: &FrameInfo,
    records: &mut Vec<Record>,
    from_offset: u64,
) {
    let area_start = FRAME_HEADER_BYTES;
    let area_end = frame.len() - FRAME_TRAILER_BYTES;
    let mut iterator = RecordIter::new(&frame[area_start..area_end]);
    let mut offset = info.base_offset;
    while let Some(Ok(raw)) = iterator.next_raw() {
        if offset >= from_offset {
            let slice =
                |range: Range<usize>| frame.slice(area_start + range.start..area_start + range.end);
            records.push(Record {
                offset,
                timestamp_ms: raw.timestamp_ms,
                key: raw.key.map(slice),
                headers: Headers(slice(raw.headers)),
                payload: slice(raw.payload),
            });
        }
        offset += 1;
    }
}

/// Decodes the timestamps of a checked frame's records, in order.
pub(crate) fn record_timestamps(frame: &[u8]) -> impl Iterator<Item = u64> + '_ {
    let area = &frame[FRAME_HEADER_BYTES..frame.len() - FRAME_TRAILER_BYTES];
    let mut iterator = RecordIter::new(area);
    std::iter::from_fn(move || match iterator.next_raw() {
        Some(Ok(raw)) => Some(raw.timestamp_ms),
        _ => None,
    })
}

/// One entry of a segment's sparse offset index: the frame that starts at `position` holds
/// `base_offset + relative_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetIndexEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// One entry of a segment's time index: every record before `position` has a timestamp of at
/// most `max_timestamp_before_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeIndexEntry {
    pub max_timestamp_before_ms: u64,
    pub relative_offset: u32,
    pub position: u32,
}

/// Encodes an offset index file: entries, then the trailer.
pub fn encode_offset_index(entries: &[OffsetIndexEntry], max_timestamp_ms: u64) -> Vec<u8> {
    let mut bytes =
        Vec::with_capacity(entries.len() * OFFSET_INDEX_ENTRY_BYTES + INDEX_TRAILER_BYTES);
    for entry in entries {
        bytes.extend_from_slice(&entry.relative_offset.to_le_bytes());
        bytes.extend_from_slice(&entry.position.to_le_bytes());
    }
    finish_index(bytes, entries.len(), max_timestamp_ms)
}

/// Encodes a time index file: entries, then the trailer.
pub fn encode_time_index(entries: &[TimeIndexEntry], max_timestamp_ms: u64) -> Vec<u8> {
    let mut bytes =
        Vec::with_capacity(entries.len() * TIME_INDEX_ENTRY_BYTES + INDEX_TRAILER_BYTES);
    for entry in entries {
        bytes.extend_from_slice(&entry.max_timestamp_before_ms.to_le_bytes());
        bytes.extend_from_slice(&entry.relative_offset.to_le_bytes());
        bytes.extend_from_slice(&entry.position.to_le_bytes());
    }
    finish_index(bytes, entries.len(), max_timestamp_ms)
}

fn finish_index(mut bytes: Vec<u8>, entry_count: usize, max_timestamp_ms: u64) -> Vec<u8> {
    bytes.extend_from_slice(&max_timestamp_ms.to_le_bytes());
    // Indexes hold at most one entry per index_interval_bytes of a segment below 4 GiB.
    let count = u32::try_from(entry_count).expect("index entry count fits a u32");
    bytes.extend_from_slice(&count.to_le_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Checks an index file's trailer and entry size; returns the entry bytes and max timestamp.
fn check_index(bytes: &[u8], entry_bytes: usize) -> Option<(&[u8], u64)> {
    if bytes.len() < INDEX_TRAILER_BYTES {
        return None;
    }
    let trailer = bytes.len() - INDEX_TRAILER_BYTES;
    let crc = read_u32(bytes, bytes.len() - 4);
    if crc != crc32c::crc32c(&bytes[..bytes.len() - 4]) {
        return None;
    }
    let count = read_u32(bytes, trailer + 8) as usize;
    if count.checked_mul(entry_bytes) != Some(trailer) {
        return None;
    }
    Some((&bytes[..trailer], read_u64(bytes, trailer)))
}

/// Decodes an offset index file; `None` when it is damaged.
pub fn decode_offset_index(bytes: &[u8]) -> Option<(Vec<OffsetIndexEntry>, u64)> {
    let (entries, max_timestamp_ms) = check_index(bytes, OFFSET_INDEX_ENTRY_BYTES)?;
    let entries = entries
        .chunks_exact(OFFSET_INDEX_ENTRY_BYTES)
        .map(|entry| OffsetIndexEntry {
            relative_offset: read_u32(entry, 0),
            position: read_u32(entry, 4),
        })
        .collect();
    Some((entries, max_timestamp_ms))
}

/// Decodes a time index file; `None` when it is damaged.
pub fn decode_time_index(bytes: &[u8]) -> Option<(Vec<TimeIndexEntry>, u64)> {
    let (entries, max_timestamp_ms) = check_index(bytes, TIME_INDEX_ENTRY_BYTES)?;
    let entries = entries
        .chunks_exact(TIME_INDEX_ENTRY_BYTES)
        .map(|entry| TimeIndexEntry {
            max_timestamp_before_ms: read_u64(entry, 0),
            relative_offset: read_u32(entry, 8),
            position: read_u32(entry, 12),
        })
        .collect();
    Some((entries, max_timestamp_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        record_bytes_max: 1024,
        batch_bytes_max: 4096,
        batch_records_max: 8,
    };

    fn batch(payloads: &[&[u8]]) -> EncodedBatch {
        let mut builder = BatchBuilder::new(LIMITS);
        for (index, payload) in payloads.iter().enumerate() {
            builder
                .push(RecordInput {
                    timestamp_ms: 1000 + index as u64,
                    key: (index % 2 == 0).then_some(&b"key"[..]),
                    headers: &[(b"type", b"order.created"), (b"empty", b"")],
                    payload,
                })
                .unwrap();
        }
        builder.finish().unwrap()
    }

    #[test]
    fn a_frame_round_trips_with_its_records() {
        let mut encoded = batch(&[b"one", b"", b"three"]);
        set_base_offset(&mut encoded.bytes, 40);
        let info = check_frame(&encoded.bytes, u32::MAX).unwrap();
        assert_eq!(info.base_offset, 40);
        assert_eq!(info.record_count, 3);
        assert_eq!(info.max_timestamp_ms, 1002);
        let frame = Bytes::from(encoded.bytes);
        let mut records = Vec::new();
        decode_records(&frame, &info, &mut records, 41);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].offset, 41);
        assert_eq!(records[0].key, None);
        assert_eq!(&records[0].payload[..], b"");
        assert_eq!(records[1].key.as_deref(), Some(&b"key"[..]));
        assert_eq!(&records[1].payload[..], b"three");
        assert_eq!(records[1].headers.get(b"type"), Some(&b"order.created"[..]));
        assert_eq!(records[1].headers.iter().count(), 2);
    }

    #[test]
    fn the_base_offset_is_outside_the_checksum() {
        let mut encoded = batch(&[b"a"]);
        set_base_offset(&mut encoded.bytes, 7);
        assert!(check_frame(&encoded.bytes, u32::MAX).is_ok());
        set_base_offset(&mut encoded.bytes, 9);
        assert_eq!(
            check_frame(&encoded.bytes, u32::MAX).unwrap().base_offset,
            9
        );
    }

    #[test]
    fn every_flipped_bit_after_the_base_offset_is_detected() {
        let encoded = batch(&[b"payload", b"more"]);
        for byte in 8..encoded.bytes.len() {
            for bit in 0..8 {
                let mut damaged = encoded.bytes.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    check_frame(&damaged, u32::MAX).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_incomplete_or_corrupt() {
        let encoded = batch(&[b"payload"]);
        for length in 0..encoded.bytes.len() {
            assert!(check_frame(&encoded.bytes[..length], u32::MAX).is_err());
        }
    }

    #[test]
    fn a_record_at_the_limit_fits_and_one_byte_more_does_not() {
        let mut builder = BatchBuilder::new(LIMITS);
        // RECORD_OVERHEAD_BYTES plus an empty header block and no key.
        let payload = vec![7u8; LIMITS.record_bytes_max as usize - RECORD_OVERHEAD_BYTES];
        let record = |payload| RecordInput {
            timestamp_ms: 1,
            key: None,
            headers: &[],
            payload,
        };
        builder.push(record(&payload)).unwrap();
        let too_big = vec![7u8; payload.len() + 1];
        assert_eq!(
            builder.push(record(&too_big)),
            Err(BatchError::RecordTooLarge {
                index: 1,
                bytes: 1025,
                max: 1024
            })
        );
        assert_eq!(builder.record_count(), 1);
    }

    #[test]
    fn batch_limits_refuse_the_record_that_would_pass_them() {
        let mut builder = BatchBuilder::new(LIMITS);
        let record = RecordInput {
            timestamp_ms: 1,
            key: None,
            headers: &[],
            payload: b"x",
        };
        for _ in 0..LIMITS.batch_records_max {
            builder.push(record).unwrap();
        }
        assert_eq!(
            builder.push(record),
            Err(BatchError::TooManyRecords { records: 9, max: 8 })
        );
        let mut builder = BatchBuilder::new(LIMITS);
        let payload = vec![0u8; 1000];
        let big = RecordInput {
            timestamp_ms: 1,
            key: None,
            headers: &[],
            payload: &payload,
        };
        // 32 + 3 × 1024 + 8 bytes fit 4096; a fourth record would make it 4136.
        for _ in 0..3 {
            builder.push(big).unwrap();
        }
        assert!(matches!(
            builder.push(big),
            Err(BatchError::BatchTooLarge { .. })
        ));
        let before = builder.encoded_bytes();
        assert_eq!(builder.finish().unwrap().encoded_bytes(), before);
    }

    #[test]
    fn an_empty_batch_is_refused() {
        assert_eq!(
            BatchBuilder::new(LIMITS).finish().unwrap_err(),
            BatchError::Empty
        );
    }

    #[test]
    fn index_files_round_trip_and_damage_is_detected() {
        let entries = vec![
            OffsetIndexEntry {
                relative_offset: 0,
                position: 24,
            },
            OffsetIndexEntry {
                relative_offset: 50,
                position: 5000,
            },
        ];
        let bytes = encode_offset_index(&entries, 99);
        assert_eq!(decode_offset_index(&bytes), Some((entries, 99)));
        for byte in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[byte] ^= 0x10;
            assert_eq!(decode_offset_index(&damaged), None);
        }
        assert_eq!(decode_offset_index(&bytes[..bytes.len() - 1]), None);
        let times = vec![TimeIndexEntry {
            max_timestamp_before_ms: 5,
            relative_offset: 3,
            position: 80,
        }];
        assert_eq!(
            decode_time_index(&encode_time_index(&times, 7)),
            Some((times, 7))
        );
    }

    #[test]
    fn segment_headers_round_trip_and_damage_is_detected() {
        let header = encode_segment_header(1234);
        assert_eq!(decode_segment_header(&header), Some(1234));
        let mut damaged = header;
        damaged[9] ^= 1;
        assert_eq!(decode_segment_header(&damaged), None);
        assert_eq!(decode_segment_header(&header[..10]), None);
    }
}
