//! A session's receiving: the multishot receive and its arrivals, or one
//! receive at a time into its own buffer; the handler fed whole packets;
//! reading paused while the send queue is backlogged.

use super::*;

impl Session {
    /// Cancels the multishot receive for backpressure; its end comes back
    /// through [`Session::on_multishot_end`].
    pub(super) fn stop_multishot(self: &Arc<Self>) {
        if let Err(e) = self.stream.cancel_multishot() {
            // It ended on its own already: its end, on the way or handled,
            // finds the session stopping and does not post it again.
            tracing::debug!("session {}: no multishot receive to stop: {e}", self.id);
        }
    }

    pub(super) fn post_multishot(self: &Arc<Self>) {
        if !self.is_connected() {
            return;
        }
        if let Err((error, _)) = self.stream.recv_multishot(Io::RecvEnd(self.clone())) {
            self.disconnect(&format!("cannot post a receive: {error}"));
        }
    }

    /// Bytes arrived through the multishot receive.
    pub(crate) fn on_arrival(self: &Arc<Self>, bytes: &[u8]) {
        // Bytes received while closing are dropped unread.
        if !self.is_connected() || self.is_closing() {
            return;
        }
        WorkerCounters::bump(&self.counters.bytes_in, bytes.len() as u64);
        let outcome = self.recv.with(|slot| self.receive(slot, bytes));
        match outcome {
            Some(Ok(())) => {}
            Some(Err(reason)) => self.disconnect(&reason),
            None => self.disconnect("its receive buffer was reached off its worker thread"),
        }
    }

    /// Hands `bytes`, after what the buffer holds, to the handler.
    pub(super) fn receive(
        self: &Arc<Self>,
        slot: &mut RecvSlot,
        bytes: &[u8],
    ) -> Result<(), String> {
        let outcome = match slot.buffer.as_mut() {
            // Nothing pending: the handler reads the pooled buffer directly,
            // and only an incomplete packet is copied out of it.
            None => self.handler.on_recv(self, bytes).and_then(|consumed| {
                let rest = bytes
                    .get(consumed..)
                    .ok_or("handler consumed more than it was given")?;
                if !rest.is_empty() {
                    let (capacity, low_water) = self.recv_capacity;
                    let buffer = slot
                        .buffer
                        .insert(RecvBuffer::growable(capacity, low_water));
                    if !buffer.append(rest) {
                        return Err("receive buffer full: a packet larger than the buffer".into());
                    }
                }
                Ok(())
            }),
            Some(buffer) => self.receive_into(buffer, bytes),
        };
        // An idle session pins no receive buffer.
        if slot
            .buffer
            .as_ref()
            .is_some_and(|b| b.readable().is_empty())
        {
            slot.buffer = None;
        }
        if slot.buffer.is_none() {
            self.made_progress();
        }
        let allocated = slot.buffer.as_ref().map_or(0, RecvBuffer::allocated);
        self.held_buffer.store(allocated, Ordering::Relaxed);
        outcome
    }

    /// Hands `bytes`, after what `buffer` holds of an incomplete packet, to
    /// the handler — in pieces as room allows, the handler consuming whole
    /// packets between them, so that any packet that fits the buffer is
    /// received whole however the arrivals cut it.
    pub(super) fn receive_into(
        self: &Arc<Self>,
        buffer: &mut RecvBuffer,
        mut bytes: &[u8],
    ) -> Result<(), String> {
        while !bytes.is_empty() {
            let room = buffer.room();
            if room == 0 {
                return Err("receive buffer full: a packet larger than the buffer".into());
            }
            let (piece, rest) = bytes.split_at(bytes.len().min(room));
            if !buffer.append(piece) {
                return Err("receive buffer full: a packet larger than the buffer".into());
            }
            let consumed = self.handler.on_recv(self, buffer.readable())?;
            buffer
                .consume(consumed)
                .map_err(|e| format!("handler error: {e}"))?;
            if !self.is_connected() || self.is_closing() {
                // Nothing more is handed to a session its handler ended.
                return Ok(());
            }
            bytes = rest;
        }
        Ok(())
    }

    /// The multishot receive ended.
    pub(crate) fn on_multishot_end(self: &Arc<Self>, result: io::Result<Transfer>) {
        let code = result.as_ref().err().and_then(|e| e.winsock_code());
        let restartable = matches!(code, Some(WSAENOBUFS | WSA_OPERATION_ABORTED));
        if restartable && self.multishot_ended_for_backpressure() {
            return;
        }
        match result {
            Ok(_) => self.on_end_of_stream(),
            // The pool ran dry or the kernel stopped it: start it again.
            Err(e) if e.winsock_code() == Some(WSAENOBUFS) => self.post_multishot(),
            Err(e) => self.disconnect(&format!("receive failed: {e}")),
        }
    }

    /// Whether an end of the multishot receive belongs to backpressure:
    /// `true` if the receive stays stopped, or was posted again because the
    /// queue drained meanwhile.
    pub(super) fn multishot_ended_for_backpressure(self: &Arc<Self>) -> bool {
        let resume = self.send.with(SendQueue::multishot_ended);
        let Some(Some(resume)) = resume else {
            return false;
        };
        if resume {
            self.post_multishot();
        }
        true
    }

    pub(super) fn post_recv(self: &Arc<Self>, mut buffer: RecvBuffer) {
        if !self.is_connected() {
            return;
        }
        let tail = buffer.lend();
        self.held_buffer.store(buffer.capacity(), Ordering::Relaxed);
        let carrier = self.recv.with(|slot| {
            slot.buffer = Some(buffer);
            let mut carrier = mem::take(&mut slot.carrier);
            carrier.push(tail);
            carrier
        });
        let Some(carrier) = carrier else {
            return self.disconnect("its receive buffer was reached off its worker thread");
        };
        if let Err(e) = self.stream.recv(carrier, Io::Recv(self.clone())) {
            let (error, _, _) = e.into_parts();
            self.disconnect(&format!("cannot post a receive: {error}"));
        }
    }

    /// A receive completed: hand the bytes to the handler, then post the
    /// next receive.
    pub(crate) fn on_recv_complete(
        self: &Arc<Self>,
        result: io::Result<Transfer>,
        tails: Option<Vec<Tail>>,
    ) {
        let Some(mut buffer) = self.recv.with(|slot| slot.buffer.take()).flatten() else {
            return;
        };
        let received = match result {
            Ok(transfer) => transfer.bytes,
            Err(e) => return self.disconnect(&format!("receive failed: {e}")),
        };
        WorkerCounters::bump(&self.counters.bytes_in, received as u64);
        if let Some(mut carrier) = tails {
            if let Some(tail) = carrier.pop() {
                buffer.restore(tail, received);
            }
            self.recv.with(|slot| slot.carrier = carrier);
        }
        if received == 0 {
            return self.on_end_of_stream();
        }
        if !self.is_connected() {
            return;
        }
        if self.is_closing() {
            buffer.clear();
            return self.post_recv(buffer);
        }
        let consumed = match self.handler.on_recv(self, buffer.readable()) {
            Ok(consumed) => consumed,
            Err(reason) => return self.disconnect(&reason),
        };
        if let Err(e) = buffer.consume(consumed) {
            return self.disconnect(&format!("handler error: {e}"));
        }
        if buffer.readable().is_empty() {
            self.made_progress();
        }
        buffer.compact_if_needed();
        if buffer.free() == 0 {
            return self.disconnect("receive buffer full: a packet larger than the buffer");
        }
        self.post_recv_unless_backlogged(buffer);
    }

    /// Posts the next receive, unless the send queue holds more than half
    /// its cap: then the peer sends faster than it reads, and the session
    /// stops reading until the queue is down to a quarter, so TCP flow
    /// control slows the peer instead of the queue growing to the cap.
    pub(super) fn post_recv_unless_backlogged(self: &Arc<Self>, buffer: RecvBuffer) {
        let unparked = self.send.with_arg(buffer, |queue, buffer| {
            if queue.queued > self.max_send_queue / 2 {
                queue.parked_recv = Some(buffer);
                return None;
            }
            Some(buffer)
        });
        match unparked {
            Ok(Some(buffer)) => self.post_recv(buffer),
            Ok(None) => {}
            Err(_) => self.disconnect("its send queue was reached off its worker thread"),
        }
    }
}
