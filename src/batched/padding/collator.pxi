# The rows collator: the four pieces above, as the collator of the inference
# front ends' engines (included by _padding.pyx).


cdef class RowsCollator(Collator):
    """Rows calls: a call hands in a dict of features with n rows, queued as
    one entry of n items (no Python object per row). A batch is the padded
    features of its calls' rows; each call gets its rows of the output back,
    in the output's structure. A call that fits in a batch is never split
    (keep_calls_whole), so its rows share one padded length and come back as
    one view. Composes a FeatureReader (checks), a Padder (with its
    HostBuffers) and an OutputSplitter."""
    cdef readonly FeatureReader reader
    cdef readonly Padder padder
    cdef readonly OutputSplitter splitter
    cdef readonly object pad_tokens     # as given: a dict of pad values, one number, or None
    cdef readonly bint spread_kwargs

    def __init__(self, str name, pad_tokens, str padding_side, *, device=None, pad_to_multiple_of=None,
                 batch_size_buckets=None, bint spread_kwargs=False, bint side_stream=False):
        Collator.__init__(self, name)
        self.keep_calls_whole = True
        self.pad_tokens = pad_tokens
        self.spread_kwargs = spread_kwargs
        if isinstance(pad_tokens, Mapping):
            pad_by_key, default_pad = dict(pad_tokens), 0
        else:
            pad_by_key, default_pad = {}, (0 if pad_tokens is None else pad_tokens)
        self.reader = FeatureReader(name, pad_by_key, default_pad, device=device, spread_kwargs=spread_kwargs)
        self.padder = Padder(padding_side, device=device, pad_to_multiple_of=pad_to_multiple_of,
                             batch_size_buckets=batch_size_buckets, side_stream=side_stream)
        self.splitter = OutputSplitter(name)

    # ---- the pieces, for Python callers (stack_features, benchmarks, tests) ----

    def request(self, features):
        """The ``Rows`` of one call's features (see FeatureReader)."""
        return self.reader.request(features)

    def collate(self, list spans):
        """The padded batch of ``spans`` [(Rows, first row, row count), ...]."""
        return self.padder.collate(self.reader.schema, spans)

    def join(self, list pieces):
        return self.splitter.join(pieces)

    @property
    def pad_left(self):
        return self.padder.pad_left

    @property
    def device(self):
        return self.padder.device

    @property
    def stage_to_device(self):
        return self.padder.stage_to_device

    @stage_to_device.setter
    def stage_to_device(self, bint value):
        self.padder.stage_to_device = value

    def padding_efficiency(self):
        return self.padder.padding_efficiency()

    def reset_counts(self):
        self.padder.reset_counts()

    # ---- the engine's collator ----

    cdef _Call new_call(self, object features):
        cdef Rows rows = self.reader.read_request(features)
        cdef _Call c = _Call.__new__(_Call)
        c.init(rows.n_rows)
        c.rows = rows
        c.results = []
        if self.measure_lengths:
            # the Rows' own lengths: it lives as long as the call
            c.entry.lengths = rows.row_lengths.data()
        return c

    cdef object inputs(self, CBatch& batch):
        cdef size_t s
        cdef CSpan* span
        spans = []
        for s in range(batch.spans.size()):
            span = &batch.spans[s]
            spans.append(((<_Call>span.entry.owner).rows, span.begin, span.count))
        return self.padder.collate(self.reader.schema, spans)

    cdef object outputs(self, object out, CBatch& batch):
        cdef size_t s
        counts = [batch.spans[s].count for s in range(batch.spans.size())]
        return self.splitter.split(out, counts, self.padder.padded_rows(batch.size))

    cdef int store(self, _Call c, CSpan* span, object outs, size_t s, Py_ssize_t first) except -1:
        c.results.append((span.begin, (<list>outs)[s]))
        return 0

    cdef object outcome(self, _Call c):
        if len(c.results) == 1:  # ran in one batch: its piece as cut
            return (<tuple>(<tuple>c.results[0])[1])[1]
        return self.splitter.join(c.results)
