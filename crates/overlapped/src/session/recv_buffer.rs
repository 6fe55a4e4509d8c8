//! `RecvBuffer`: where a session's one posted receive lands.

use crate::driver::buf::Tail;

/// A receive buffer with read and write cursors, the classic IOCP
/// session's `RecvBuffer`.
///
/// The kernel writes at the write cursor (the free tail is what the next
/// receive is given); the program consumes whole packets at the read
/// cursor. When the unread bytes reach the end and little room is left,
/// they are moved to the front (compaction), so a buffer of capacity `C`
/// always has room for a packet of up to `C - low_water` bytes.
#[derive(Debug)]
pub struct RecvBuffer {
    /// The storage; shorter than `capacity` while a growable buffer has not
    /// needed all of it.
    data: Vec<u8>,
    read: usize,
    write: usize,
    /// Compact when less than this much room is left at the end.
    low_water: usize,
    /// The most `data` may grow to.
    capacity: usize,
}

/// The smallest storage a growable buffer starts with.
const FIRST_GROWTH: usize = 2048;

impl RecvBuffer {
    /// A buffer of `capacity` bytes that compacts once less than
    /// `low_water` bytes are free at its end.
    pub fn new(capacity: usize, low_water: usize) -> RecvBuffer {
        let capacity = capacity.max(1);
        RecvBuffer {
            data: vec![0; capacity],
            read: 0,
            write: 0,
            low_water: low_water.min(capacity),
            capacity,
        }
    }

    /// A buffer that may grow to `capacity` bytes but takes only what the
    /// bytes appended to it need (doubling as they come): a partial packet
    /// costs what has arrived of it, not the largest packet.
    pub fn growable(capacity: usize, low_water: usize) -> RecvBuffer {
        let capacity = capacity.max(1);
        RecvBuffer {
            data: Vec::new(),
            read: 0,
            write: 0,
            low_water: low_water.min(capacity),
            capacity,
        }
    }

    /// Bytes of storage it holds now (at most its capacity).
    pub fn allocated(&self) -> usize {
        self.data.capacity()
    }

    /// The bytes received and not yet consumed.
    pub fn readable(&self) -> &[u8] {
        &self.data[self.read..self.write]
    }

    /// Marks `n` readable bytes as consumed. Consuming more than
    /// [`RecvBuffer::readable`] holds is `InvalidInput` and changes nothing.
    pub fn consume(&mut self, n: usize) -> std::io::Result<()> {
        let readable = self.write - self.read;
        if n > readable {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("cannot consume {n} bytes: only {readable} were received"),
            ));
        }
        self.read += n;
        if self.read == self.write {
            // Empty: start over at the front for free.
            self.read = 0;
            self.write = 0;
        }
        Ok(())
    }

    /// Drops every unread byte.
    pub fn clear(&mut self) {
        self.read = 0;
        self.write = 0;
    }

    /// Bytes free after the write cursor.
    pub fn free(&self) -> usize {
        self.data.len() - self.write
    }

    /// Bytes it can take in: the free space once the unread bytes are
    /// moved to the front and the storage has grown to its capacity (what
    /// [`RecvBuffer::append`] does when it must).
    pub fn room(&self) -> usize {
        self.capacity - (self.write - self.read)
    }

    /// The most it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The free space below which it compacts.
    pub fn low_water(&self) -> usize {
        self.low_water
    }

    /// Moves the unread bytes to the front if the free tail is below the
    /// low-water mark. Returns whether it moved anything.
    pub fn compact_if_needed(&mut self) -> bool {
        if self.free() >= self.low_water || self.read == 0 {
            return false;
        }
        self.data.copy_within(self.read..self.write, 0);
        self.write -= self.read;
        self.read = 0;
        true
    }

    /// Copies `bytes` in after the unread ones, compacting first if they do
    /// not fit at the end, and growing the storage (up to the capacity) if
    /// they still do not. `false` (and nothing copied) if they do not fit at
    /// all.
    pub fn append(&mut self, bytes: &[u8]) -> bool {
        if self.free() < bytes.len() && self.read > 0 {
            self.data.copy_within(self.read..self.write, 0);
            self.write -= self.read;
            self.read = 0;
        }
        let needed = self.write + bytes.len();
        if needed > self.capacity {
            return false;
        }
        if needed > self.data.len() {
            let grown = needed.max(self.data.len() * 2).max(FIRST_GROWTH);
            self.data.resize(grown.min(self.capacity), 0);
        }
        self.data[self.write..needed].copy_from_slice(bytes);
        self.write = needed;
        true
    }

    /// Lends the free tail to a receive (all the storage there is to be).
    pub(crate) fn lend(&mut self) -> Tail {
        self.data.resize(self.capacity, 0);
        Tail::new(std::mem::take(&mut self.data), self.write)
    }

    /// Takes the storage back after a receive of `received` bytes.
    pub(crate) fn restore(&mut self, tail: Tail, received: usize) {
        self.data = tail.into_inner();
        self.write = (self.write + received).min(self.data.len());
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn receive(buffer: &mut RecvBuffer, bytes: &[u8]) {
        let write = buffer.write;
        let mut vec = buffer.lend().into_inner();
        vec[write..write + bytes.len()].copy_from_slice(bytes);
        buffer.restore(Tail::new(vec, write), bytes.len());
    }

    #[test]
    fn received_bytes_are_readable_until_consumed() {
        let mut buffer = RecvBuffer::new(16, 4);
        receive(&mut buffer, b"abcdef");
        assert_eq!(buffer.readable(), b"abcdef");
        buffer.consume(2).unwrap();
        assert_eq!(buffer.readable(), b"cdef");
    }

    #[test]
    fn consuming_everything_resets_the_cursors() {
        let mut buffer = RecvBuffer::new(16, 4);
        receive(&mut buffer, b"abcdef");
        buffer.consume(6).unwrap();
        assert_eq!(buffer.free(), 16);
    }

    #[test]
    fn compaction_moves_unread_bytes_to_the_front_when_nearly_full() {
        let mut buffer = RecvBuffer::new(16, 4);
        receive(&mut buffer, b"0123456789abcd");
        buffer.consume(10).unwrap();
        assert_eq!(buffer.free(), 2);
        assert!(buffer.compact_if_needed());
        assert_eq!(buffer.readable(), b"abcd");
        assert_eq!(buffer.free(), 12);
    }

    #[test]
    fn no_compaction_while_room_is_left() {
        let mut buffer = RecvBuffer::new(16, 4);
        receive(&mut buffer, b"0123");
        buffer.consume(2).unwrap();
        assert!(!buffer.compact_if_needed());
        assert_eq!(buffer.readable(), b"23");
    }

    #[test]
    fn consuming_more_than_received_is_an_error_and_changes_nothing() {
        let mut buffer = RecvBuffer::new(16, 4);
        receive(&mut buffer, b"ab");
        assert!(buffer.consume(3).is_err());
        assert_eq!(buffer.readable(), b"ab");
    }

    #[test]
    fn append_compacts_to_make_room() {
        let mut buffer = RecvBuffer::new(8, 2);
        assert!(buffer.append(b"abcdef"));
        buffer.consume(4).unwrap();
        assert!(buffer.append(b"ghijk"));
        assert_eq!(buffer.readable(), b"efghijk");
    }

    #[test]
    fn append_that_cannot_fit_changes_nothing() {
        let mut buffer = RecvBuffer::new(8, 2);
        assert!(buffer.append(b"abcdef"));
        assert!(!buffer.append(b"ghi"));
        assert_eq!(buffer.readable(), b"abcdef");
    }

    #[test]
    fn lending_gives_the_free_tail() {
        let mut buffer = RecvBuffer::new(16, 4);
        receive(&mut buffer, b"abc");
        let tail = buffer.lend();
        assert_eq!(crate::IoBuf::len(&tail), 13);
        buffer.restore(tail, 0);
        assert_eq!(buffer.readable(), b"abc");
    }
}
