package spool

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// FuzzSplitMessage: whatever a message file holds, reading it never panics, and what it
// accepts survives a write and a read again unchanged.
func FuzzSplitMessage(f *testing.F) {
	line, _ := encodeEnvelope(envelope{From: "a@b", To: rawStrings{"c@d"}, Received: time.Unix(1, 0).UTC(), Size: 5})
	f.Add(append(line, "hello"...))
	f.Add([]byte(magic + "{\"to\":[\"x\"],\"size\":0}\n"))
	f.Add([]byte(magic + "{\"to\":[],\"size\":0}\n"))
	f.Add([]byte(magic + "{\"to\":[\"x\"],\"size\":-1}\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		env, data, err := splitMessage(b)
		if err != nil {
			return
		}
		require.NotEmpty(t, env.To)
		require.Len(t, data, env.Size)
		line, err := encodeEnvelope(env)
		if errors.Is(err, ErrEnvelopeTooLarge) {
			return // a hand-made line in a shorter JSON than ours: nothing Submit writes
		}
		require.NoError(t, err)
		require.Equal(t, 1, bytes.Count(line, []byte("\n")), "the envelope is one line")
		env2, data2, err := splitMessage(append(line, data...))
		require.NoError(t, err)
		require.Equal(t, env.From, env2.From)
		require.Equal(t, env.To, env2.To)
		require.True(t, env.Received.Equal(env2.Received))
		require.Equal(t, data, data2)
	})
}

// FuzzEnvelopeRoundTrip: any envelope and message, control characters included, come back
// from the file as they went in.
func FuzzEnvelopeRoundTrip(f *testing.F) {
	f.Add("alice@example.com", "bob@example.net\ncarol@example.org", []byte("Subject: x\r\n\r\nbody\r\n"))
	f.Add("", "a\"b\\c@d", []byte(""))
	f.Add("ü@ö.de", "\x00\r\n", []byte("\n\n"))
	f.Fuzz(func(t *testing.T, from, to string, data []byte) {
		rcpts := strings.Split(to, "\n")
		env := envelope{From: rawString(from), To: rcpts, Received: time.Unix(1700000000, 5).UTC(), Size: len(data)}
		line, err := encodeEnvelope(env)
		if len(rcpts) > MaxRecipients || errors.Is(err, ErrEnvelopeTooLarge) {
			require.True(t, errors.Is(err, ErrTooManyRecipients) || errors.Is(err, ErrEnvelopeTooLarge)) // refused by Submit
			return
		}
		require.NoError(t, err)
		got, gotData, err := splitMessage(append(line, data...))
		require.NoError(t, err)
		require.Equal(t, from, string(got.From))
		require.Equal(t, rcpts, []string(got.To))
		require.Equal(t, data, gotData)
	})
}

func TestReadEnvelope(t *testing.T) {
	dir := t.TempDir()
	long := make([]string, 300) // an envelope line longer than bufio's buffer
	for i := range long {
		long[i] = strings.Repeat("r", 40) + "@example.net"
	}
	ok, _ := encodeEnvelope(envelope{From: "a@b", To: rawStrings{"c@d"}, Size: 3})
	big, _ := encodeEnvelope(envelope{From: "a@b", To: long, Size: 3})
	for _, tc := range []struct {
		name    string
		content string
		wantErr string
	}{
		{"whole", string(ok) + "abc", ""},
		{"long envelope", string(big) + "abc", ""},
		{"short message", string(ok) + "ab", "the envelope says"},
		{"long message", string(ok) + "abcd", "the envelope says"},
		{"no newline", string(ok[:len(ok)-1]), "no complete envelope line"},
		{"empty", "", "no complete envelope line"},
		{"foreign", "From: x\r\n\r\n", "not a spool message file"},
		{"bad json", magic + "{\n", "envelope:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "x.msg")
			require.NoError(t, os.WriteFile(path, []byte(tc.content), 0o600))
			_, err := readEnvelope(path)
			_, _, err2 := readMessage(path)
			if tc.wantErr == "" {
				require.NoError(t, err)
				require.NoError(t, err2)
				return
			}
			require.ErrorContains(t, err, tc.wantErr)
			require.ErrorContains(t, err2, tc.wantErr)
		})
	}
}

// FuzzEnvelopeJSON: the direct encoding of an envelope is byte for byte what json.Marshal
// writes, whatever the addresses, times and sizes.
func FuzzEnvelopeJSON(f *testing.F) {
	f.Add("seg", "id1", "alice@example.com", "bob@example.net\ncarol@example.org", int64(1700000000), int64(5), 10, uint32(7))
	f.Add("", "", "", "", int64(0), int64(0), 0, uint32(0))
	f.Add("", "x", "a<b>&\"c\\", "ü@ö.de\n\x00", int64(-70000000000), int64(999999999), -1, uint32(1))
	f.Add("", "x", "a", "b", int64(253402300800), int64(1), 1, uint32(1)) // year 10000
	f.Fuzz(func(t *testing.T, seg, id, from, to string, sec, nsec int64, size int, crc uint32) {
		var rcpts rawStrings
		if to != "" {
			rcpts = strings.Split(to, "\n")
		}
		for _, loc := range []*time.Location{time.UTC, time.FixedZone("x", 3600+30)} {
			env := envelope{Seg: seg, ID: id, From: rawString(from), To: rcpts, Received: time.Unix(sec, nsec).In(loc), Size: size, CRC: crc}
			want, werr := json.Marshal(env)
			got, gerr := appendEnvelopeJSON([]byte("prefix"), env)
			if werr != nil {
				require.Error(t, gerr)
				continue
			}
			require.NoError(t, gerr)
			require.Equal(t, "prefix"+string(want), string(got))
		}
	})
}
