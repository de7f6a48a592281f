# Collating: the rows of a batch's calls padded into one array per feature,
# natively (included by _padding.pyx).


cdef class Padder:
    """Pads a batch's rows into one array or tensor per feature: host rows
    with the C++ ``pad_rows`` (GIL released) straight from the callers'
    buffers into a pooled buffer; device tensors with the torch op
    ``batched::pad_stack`` where they are; host rows bound for a device
    (``device="cuda"``) packed into one pinned buffer, copied once, and padded
    there. Counts the real and padded steps of every batch (padding efficiency)."""
    cdef readonly bint pad_left
    cdef object pad_to_multiple_of
    cdef tuple buckets
    cdef readonly object device        # target torch device, or None: where the inputs are
    cdef public bint stage_to_device   # for tests: stage host rows even when device is the CPU
    cdef HostBuffers buffers
    cdef bint side_stream              # stage on a CUDA side stream (prefetch: a batch runs meanwhile)
    cdef object stream                 # that stream, made on first use
    cdef uint64_t real_steps           # steps of the callers' rows in collated batches (first feature)
    cdef uint64_t padded_steps         # steps of those batches once padded

    def __init__(self, str padding_side, *, device=None, pad_to_multiple_of=None, batch_size_buckets=None,
                 bint side_stream=False):
        self.pad_left = padding_side == "left"
        self.side_stream = side_stream
        self.pad_to_multiple_of = pad_to_multiple_of
        self.buckets = tuple(sorted(batch_size_buckets)) if batch_size_buckets else ()
        self.device = device
        self.buffers = HostBuffers()

    cpdef Py_ssize_t padded_rows(self, Py_ssize_t n):
        """The batch dimension for ``n`` rows: ``n``, or the next bucket."""
        for b in self.buckets:
            if b >= n:
                return b
        return n

    def padding_efficiency(self):
        """Steps of the callers' rows / steps of the padded batches (first
        feature), over every batch collated since the last reset; None before
        the first."""
        return self.real_steps / self.padded_steps if self.padded_steps else None

    def reset_counts(self):
        self.real_steps = 0
        self.padded_steps = 0

    cdef int64_t padded_length(self, int64_t longest):
        if self.pad_to_multiple_of is None:
            return longest
        cdef int64_t m = self.pad_to_multiple_of
        return (longest + m - 1) // m * m

    cdef dict collate(self, _Schema schema, list spans):
        """The padded batch of ``spans`` [(Rows, first row, row count), ...] of
        calls read by ``schema``'s reader, as a dict of arrays [rows, max
        length, ...]: numpy if the calls gave numpy (and no ``device``), else
        torch on the target device."""
        cdef Py_ssize_t n = 0
        cdef Py_ssize_t i, first, count
        cdef uint64_t real = 0
        cdef uint32_t longest = 0, length
        cdef Rows rows
        for span in spans:
            rows = <Rows>span[0]
            first = span[1]
            count = span[2]
            n += count
            for i in range(first, first + count):
                length = rows.row_lengths[i]
                real += length
                if length > longest:
                    longest = length
        cdef Py_ssize_t padded = self.padded_rows(n)
        cdef bint on_host = (<Rows>spans[0][0]).on_host
        cdef bint staged = on_host and self.device is not None and (self.stage_to_device or self.device.type != "cpu")
        side = None
        if self.side_stream and (staged or not on_host) and self.device is not None and self.device.type == "cuda":
            side = self.enter_side_stream(not on_host)
        out = {}
        try:
            for i in range(len(schema.specs)):
                spec = schema.specs[i]
                if not on_host:
                    out[(<_Spec>spec).key] = self.pad_on_device(spec, i, spans, n, padded)
                elif staged:
                    out[(<_Spec>spec).key] = self.stage(spec, schema.kind, i, spans, n, padded)
                else:
                    out[(<_Spec>spec).key] = self.pad_on_host(spec, schema.kind, i, spans, padded)
        finally:
            if side is not None:
                side.__exit__(None, None, None)
        if side is not None:
            self.join_side_stream(out)
        # Counted once the batch is padded, with the GIL held: concurrent
        # workers' counts do not mix.
        self.real_steps += real
        self.padded_steps += <uint64_t>padded * <uint64_t>self.padded_length(longest)
        return out

    cdef object enter_side_stream(self, bint after_main):
        """Makes the side stream current for this thread (the copies and the
        pad kernel of a batch formed ahead go there, beside the running batch's
        kernels); returns the context to exit. ``after_main``: the rows are
        device tensors, made on the current stream: the side stream waits for
        it first (the pad kernel then overlaps nothing, but stays correct)."""
        torch = _torch_mod()
        if self.stream is None:
            self.stream = torch.cuda.Stream(device=self.device)
        if after_main:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        context = torch.cuda.stream(self.stream)
        context.__enter__()
        return context

    cdef int join_side_stream(self, dict out) except -1:
        """The device's current stream, which the batch function uses, waits
        for the side stream's work on ``out`` (on the device, not here), and
        the allocator keeps ``out``'s memory until that stream is done with it."""
        torch = _torch_mod()
        main = torch.cuda.current_stream(self.device)
        main.wait_stream(self.stream)
        for value in out.values():
            value.record_stream(main)
        return 0

    cdef object pad_on_host(self, _Spec spec, int kind, Py_ssize_t feature, list spans, Py_ssize_t padded):
        """C++ padding straight from the callers' buffers, without the GIL."""
        cdef vector[CRowView] rows
        cdef CRowView row
        cdef int64_t longest = 0
        rows.reserve(padded)
        for span in spans:
            _gather(<_FeatureRows>(<Rows>span[0]).features[feature], span[1], span[2], &rows, &longest)
        row.data = NULL
        row.length = 0
        while <Py_ssize_t>rows.size() < padded:
            rows.push_back(row)  # bucket padding: rows of pad only
        cdef int64_t max_length = self.padded_length(longest)
        shape = (padded, max_length) + spec.trailing
        cdef char* dst
        cdef size_t nbytes = padded * max_length * spec.step_bytes
        if kind == NUMPY and self.device is None:
            out = self.buffers.array(shape, spec.dtype, nbytes, &dst)
        else:
            torch = _torch_mod()
            dtype = spec.dtype if kind == TORCH else spec.torch_dtype
            same_size = _INT_OF_SIZE.get(spec.itemsize)
            if _numpy() is not None and same_size is not None:
                # torch on an arena too: the tensor's storage holds the numpy
                # view, so the arena stays busy while any view of it lives
                out = torch.from_numpy(self.buffers.array(shape, same_size, nbytes, &dst))
                if out.dtype != dtype:
                    out = out.view(dtype)
            else:
                out = torch.empty(shape, dtype=dtype)
                dst = <char*><uintptr_t>out.data_ptr()
        cdef const char* pad = spec.pad_bytes
        cdef CPaddingSide side = kPadLeft if self.pad_left else kPadRight
        if nbytes < NOGIL_BYTES:
            pad_rows(rows.data(), rows.size(), spec.step_bytes, max_length, side, pad,
                     spec.itemsize, dst)
            return out
        with nogil:
            pad_rows(rows.data(), rows.size(), spec.step_bytes, max_length, side, pad,
                     spec.itemsize, dst)
        return out

    cdef object pad_on_device(self, _Spec spec, Py_ssize_t feature, list spans, Py_ssize_t n,
                              Py_ssize_t padded):
        """Device tensors: the torch op pads them where they are (one launch)."""
        cdef _FeatureRows fr
        cdef int64_t longest = 0
        blocks = []
        for span in spans:
            fr = <_FeatureRows>(<Rows>span[0]).features[feature]
            blocks.extend(fr.device_blocks(span[1], span[2]))
            _gather(fr, span[1], span[2], NULL, &longest)
        return self.pad_blocks(spec, blocks, longest, n, padded, blocks[0].dtype, blocks[0].device)

    cdef object stage(self, _Spec spec, int kind, Py_ssize_t feature, list spans, Py_ssize_t n,
                      Py_ssize_t padded):
        """Host rows to a device: packed (unpadded) into one pinned buffer, copied
        once, and padded there by the torch op. Rows of one length that are
        adjacent in a call stay together: one block, not one tensor per row."""
        torch = _torch_mod()
        cdef vector[CRowView] rows
        cdef vector[Segment] segments
        cdef int64_t longest = 0
        cdef size_t total = 0, k, r
        cdef size_t step = spec.step_bytes
        cdef size_t row_bytes
        for span in spans:
            _gather(<_FeatureRows>(<Rows>span[0]).features[feature], span[1], span[2], &rows, &longest,
                    &segments)
        for k in range(segments.size()):
            segments[k].offset = total
            row_bytes = <size_t>segments[k].length * step
            total += (segments[k].rows * row_bytes + STAGING_ALIGN - 1) // STAGING_ALIGN * STAGING_ALIGN
        pinned = self.device.type == "cuda"
        host = torch.empty(max(total, 1), dtype=torch.uint8, pin_memory=pinned)
        cdef char* dst = <char*><uintptr_t>host.data_ptr()
        with nogil:
            for k in range(segments.size()):
                row_bytes = <size_t>segments[k].length * step
                if row_bytes:
                    for r in range(<size_t>segments[k].rows):
                        memcpy(dst + segments[k].offset + r * row_bytes,
                               rows[segments[k].first_row + r].data, row_bytes)
        flat = host.to(self.device, non_blocking=pinned)
        dtype = spec.dtype if kind == TORCH else spec.torch_dtype
        blocks = []
        for k in range(segments.size()):
            row_bytes = <size_t>segments[k].length * step
            part = flat.narrow(0, segments[k].offset, segments[k].rows * row_bytes).view(dtype)
            blocks.append(part.view((segments[k].rows, segments[k].length) + spec.trailing))
        return self.pad_blocks(spec, blocks, longest, n, padded, dtype, flat.device)

    cdef object pad_blocks(self, _Spec spec, list blocks, int64_t longest, Py_ssize_t n,
                           Py_ssize_t padded, object dtype, object device):
        from batched.torch_ops import pad_stack
        if padded > n:  # bucket padding: rows of pad only
            blocks.append(_torch_mod().empty((padded - n, 0) + spec.trailing, dtype=dtype, device=device))
        return pad_stack(blocks, self.padded_length(longest), spec.pad_value, self.pad_left)


cdef int _gather(_FeatureRows fr, Py_ssize_t begin, Py_ssize_t count, vector[CRowView]* rows,
                 int64_t* longest, vector[Segment]* segments=NULL) except -1:
    """Walks rows [begin, begin + count) of ``fr``: raises ``longest`` to their
    longest length and, where asked, appends them to ``rows`` and one segment
    per block they come from to ``segments``."""
    cdef size_t b = 0
    cdef Py_ssize_t i, take
    cdef Block* block
    cdef CRowView row
    cdef Segment segment
    while count > 0:
        block = &fr.blocks[b]
        b += 1
        if begin >= block.rows:
            begin -= block.rows
            continue
        take = min(block.rows - begin, count)
        row.length = block.length
        if block.length > longest[0]:
            longest[0] = block.length
        if segments != NULL:
            segment.first_row = rows.size()
            segment.rows = take
            segment.length = block.length
            segments.push_back(segment)
        if rows != NULL:
            for i in range(begin, begin + take):
                row.data = block.data + i * block.row_stride
                rows.push_back(row)
        count -= take
        begin = 0
    return 0
