package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/mail"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"relay/internal/smtptest"
)

// startSink starts an smtptest.Sink that refuses every refuseEvery-th MAIL FROM with 451
// (none when 0).
func startSink(t *testing.T, refuseEvery int) *smtptest.Sink {
	k := smtptest.Start(t)
	if refuseEvery > 0 {
		var mu sync.Mutex
		mails := 0
		k.OnMail(func(string) error {
			mu.Lock()
			defer mu.Unlock()
			mails++
			if mails%refuseEvery == 0 {
				return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "slow down"}
			}
			return nil
		})
	}
	return k
}

func TestRunDelivers(t *testing.T) {
	k := startSink(t, 0)
	var out, errb bytes.Buffer
	code := run([]string{"-addr", k.Addr, "-n", "50", "-c", "4", "-size", "2048", "-json",
		"-header-from", "Alice <alice@gmail.com>"}, &out, &errb)
	require.Equal(t, 0, code, errb.String())

	var r report
	require.NoError(t, json.Unmarshal(out.Bytes(), &r), out.String())
	require.Equal(t, 50, r.Sent)
	require.Equal(t, 50, r.OK)
	require.Zero(t, r.Failed)
	require.Empty(t, r.Errors)
	require.Positive(t, r.MsgPerSec)
	require.LessOrEqual(t, r.P50ms, r.P90ms)
	require.LessOrEqual(t, r.P90ms, r.P99ms)

	msgs := k.Messages()
	require.Len(t, msgs, 50, "all 50 arrive")
	require.Equal(t, 4, k.Conns(), "each session is reused")
	require.Equal(t, 4, r.Connections)
	for _, m := range msgs {
		require.Len(t, m.Data, 2048)
		msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
		require.NoError(t, err)
		require.Equal(t, "Alice <alice@gmail.com>", msg.Header.Get("From"))
	}
}

func TestRunReportsErrors(t *testing.T) {
	k := startSink(t, 5) // every 5th MAIL: 451
	var out, errb bytes.Buffer
	code := run([]string{"-addr", k.Addr, "-n", "20", "-c", "2", "-size", "1000"}, &out, &errb)
	require.Equal(t, 1, code, "failures make the exit status 1")
	require.Contains(t, out.String(), "ok 16, failed 4")
	require.Contains(t, out.String(), "errors: 451=4")
	require.Contains(t, out.String(), "msg/s")
	require.Contains(t, out.String(), "latency: p50 ")
	require.Len(t, k.Messages(), 16)
	require.Equal(t, 2, k.Conns(), "a refusal does not cost the session")
}

func TestRunConnectionErrors(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close() // nothing listens there any more
	var out, errb bytes.Buffer
	code := run([]string{"-addr", addr, "-n", "3", "-c", "1", "-json"}, &out, &errb)
	require.Equal(t, 1, code)
	var r report
	require.NoError(t, json.Unmarshal(out.Bytes(), &r))
	require.Equal(t, map[string]int{"conn": 3}, r.Errors)
}

func TestRunUsage(t *testing.T) {
	for _, args := range [][]string{{"-n", "0"}, {"-bogus"}, {"-to", ""}, {"extra"}} {
		var out, errb bytes.Buffer
		require.Equal(t, 2, run(args, &out, &errb), args)
		require.Empty(t, out.String())
	}
}

func TestMakeBodySize(t *testing.T) {
	for size := 1; size < 800; size++ {
		o := options{size: size, to: []string{"r@x.example"}, headerFrom: "a@b.example"}
		h := len(header(o, 0))
		b := makeBody(o)
		if size-h >= 2 {
			require.Equal(t, size, h+len(b), "size %d", size)
		} else {
			require.Empty(t, b)
		}
		for _, line := range bytes.SplitAfter(b, []byte("\r\n")) {
			require.LessOrEqual(t, len(line), 78)
		}
	}
}
