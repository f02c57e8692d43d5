package deliver

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func newOutbox(t *testing.T) *Outbox {
	o, err := NewOutbox(filepath.Join(t.TempDir(), "outbox"))
	require.NoError(t, err)
	o.now = func() time.Time { return time.Date(2026, 3, 1, 12, 30, 0, 0, time.UTC) }
	return o
}

// outboxFiles lists the directory, names sorted.
func outboxFiles(t *testing.T, dir string) []string {
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names
}

func TestOutbox(t *testing.T) {
	o := newOutbox(t)
	// Bytes a careless writer would change: bare LF, a lone dot line, 8-bit, NUL, no final
	// newline.
	data := []byte("From: Jürgen <j@customer.example>\r\nSubject: x\r\n\r\nline\n.\r\n\x00\xff end")
	to := []string{"a@dest.example", "b@dest.example"}

	res, err := o.Send(t.Context(), "app@customer.example", to, data)
	require.NoError(t, err)
	require.Len(t, res, 2)
	for i, r := range res {
		require.Equal(t, to[i], r.Rcpt)
		require.Equal(t, 250, r.Code)
	}

	names := outboxFiles(t, o.dir)
	require.Len(t, names, 2, "one .eml and one .json, no temporary file left: %v", names)
	id := strings.TrimSuffix(names[0], ".eml")
	require.Equal(t, []string{id + ".eml", id + ".json"}, names)
	require.True(t, strings.HasPrefix(id, "20260301T123000.000000000Z-"), id)

	got, err := os.ReadFile(filepath.Join(o.dir, id+".eml"))
	require.NoError(t, err)
	require.Equal(t, data, got, "byte for byte")

	raw, err := os.ReadFile(filepath.Join(o.dir, id+".json"))
	require.NoError(t, err)
	var env map[string]any
	require.NoError(t, json.Unmarshal(raw, &env))
	require.Equal(t, map[string]any{
		"from":     "app@customer.example",
		"to":       []any{"a@dest.example", "b@dest.example"},
		"received": "2026-03-01T12:30:00Z",
	}, env)

	for _, name := range names {
		fi, err := os.Stat(filepath.Join(o.dir, name))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o640), fi.Mode().Perm(), name)
	}
}

func TestOutboxManyAndNullSender(t *testing.T) {
	o := newOutbox(t)
	for range 5 {
		_, err := o.Send(t.Context(), "", []string{"a@dest.example"}, []byte("x"))
		require.NoError(t, err)
	}
	names := outboxFiles(t, o.dir)
	require.Len(t, names, 10, "same clock, still distinct ids")
	raw, err := os.ReadFile(filepath.Join(o.dir, names[1]))
	require.NoError(t, err)
	require.Contains(t, string(raw), `"from":""`)
}

func TestOutboxErrors(t *testing.T) {
	o := newOutbox(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := o.Send(ctx, "a@b.example", []string{"c@d.example"}, []byte("x"))
	var e *Error
	require.ErrorAs(t, err, &e)
	require.True(t, e.Temporary())

	require.NoError(t, os.RemoveAll(o.dir)) // the directory vanished under us
	_, err = o.Send(t.Context(), "a@b.example", []string{"c@d.example"}, []byte("x"))
	require.ErrorAs(t, err, &e)
	require.True(t, e.Temporary(), "a write failure must be retried, never bounced")
}

func TestDirectOutbox(t *testing.T) {
	o := newOutbox(t)
	d := &Direct{Sender: o}
	require.NoError(t, d.Submit(t.Context(), "ID", "a@b.example", []string{"c@d.example"}, []byte("x")))
	require.Len(t, outboxFiles(t, o.dir), 2)
}
