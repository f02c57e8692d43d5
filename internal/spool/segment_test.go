package spool

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The leader waits for more records only under concurrent load: submissions closer than
// the bound, and more than one at a time.
func TestCommitDelay(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name      string
		gap       time.Duration
		lastBatch int
		queued    int
		want      time.Duration
	}{
		{"first submission", 0, 0, 1, 0},
		{"one client in a loop", 500 * time.Microsecond, 1, 1, 0},
		{"rare submissions", 5 * ms, 4, 3, 0},
		{"concurrent, last batch shared", 300 * time.Microsecond, 3, 1, 600 * time.Microsecond},
		{"concurrent, several waiting now", 300 * time.Microsecond, 1, 2, 600 * time.Microsecond},
		{"bounded", 1900 * time.Microsecond, 2, 1, maxCommitDelay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := logWriter{gap: tc.gap, lastBatch: tc.lastBatch, queue: make([]*record, tc.queued), delayMax: maxCommitDelay}
			require.Equal(t, tc.want, w.delay())
		})
	}
}

// FuzzParseSegment: whatever a segment holds, reading it never panics, every record it
// returns is whole (its checksum holds) and in place, and the records of a segment come
// back whatever junk surrounds them.
func FuzzParseSegment(f *testing.F) {
	const id = "00000000000000ab"
	rec := func(mid string, data string) []byte {
		h, err := encodeRecordHeader(envelope{ID: mid, From: "a@b", To: rawStrings{"c@d"}, Received: time.Unix(1, 0).UTC(), Size: len(data), CRC: checksum([]byte(data))})
		if err != nil {
			f.Fatal(err)
		}
		copy(h[segIDPos:], id)
		return append(h, data...)
	}
	two := append(rec("m1", "hello\r\n"), rec("m2", "RELAY-SEG-1 {}\r\n")...)
	f.Add(two, []byte(""))
	f.Add([]byte("junk"), []byte("RELAY-SEG-1 {\"seg\":\"00000000000000ab\""))
	f.Add([]byte{}, two[:40])
	f.Fuzz(func(t *testing.T, pre, post []byte) {
		for _, b := range [][]byte{pre, append(append(slices.Clone(pre), two...), post...)} {
			recs, damaged := parseSegment(b, id)
			require.GreaterOrEqual(t, damaged, 0)
			for _, r := range recs {
				require.LessOrEqual(t, r.next, len(b))
				require.Equal(t, b[r.off:r.next], r.data)
				require.Equal(t, r.env.CRC, checksum(r.data))
				require.Equal(t, id, r.env.Seg)
			}
		}
		recs, _ := parseSegment(append(append(slices.Clone(pre), two...), post...), id)
		var ids []string
		for _, r := range recs {
			ids = append(ids, r.env.ID)
		}
		require.Subset(t, ids, []string{"m1", "m2"}, "junk around the records never hides them")
	})
}

// A body full of header starts and no line end (attacker-controlled content left in a
// recycled segment) is skipped in one pass: looking for a line end at each would take
// hours at recovery.
func TestParseSegmentQuotedHeaders(t *testing.T) {
	const id = "00000000000000ab"
	data := []byte("Subject: x\r\n\r\n")
	h, err := encodeRecordHeader(envelope{ID: "m1", From: "a@b", To: rawStrings{"c@d"}, Size: len(data), CRC: checksum(data)})
	require.NoError(t, err)
	copy(h[segIDPos:], id)
	b := append(append(h, data...), bytes.Repeat([]byte(segMagic+`{"seg":"00000000000000aa"`), 1<<15)...)
	recs, damaged := parseSegment(b, id)
	require.Len(t, recs, 1)
	require.Zero(t, damaged)
}
