package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/mail"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"
)

// sink is a go-smtp server on 127.0.0.1 that keeps what it receives and refuses every
// refuseEvery-th MAIL FROM with 451.
type sink struct {
	addr        string
	refuseEvery int

	mu    sync.Mutex
	msgs  [][]byte
	mails int
	conns int
}

func startSink(t *testing.T, refuseEvery int) *sink {
	k := &sink{refuseEvery: refuseEvery}
	s := smtp.NewServer(k)
	s.Domain = "sink.test"
	s.ErrorLog = nopLogger{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	k.addr = l.Addr().String()
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return k
}

func (k *sink) NewSession(*smtp.Conn) (smtp.Session, error) {
	k.mu.Lock()
	k.conns++
	k.mu.Unlock()
	return &sinkSession{k: k}, nil
}

type sinkSession struct{ k *sink }

func (s *sinkSession) Mail(string, *smtp.MailOptions) error {
	s.k.mu.Lock()
	defer s.k.mu.Unlock()
	s.k.mails++
	if s.k.refuseEvery > 0 && s.k.mails%s.k.refuseEvery == 0 {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "slow down"}
	}
	return nil
}
func (s *sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.k.mu.Lock()
	s.k.msgs = append(s.k.msgs, b)
	s.k.mu.Unlock()
	return nil
}
func (s *sinkSession) Reset()        {}
func (s *sinkSession) Logout() error { return nil }

type nopLogger struct{}

func (nopLogger) Printf(string, ...interface{}) {}
func (nopLogger) Println(...interface{})        {}

func TestRunDelivers(t *testing.T) {
	k := startSink(t, 0)
	var out, errb bytes.Buffer
	code := run([]string{"-addr", k.addr, "-n", "50", "-c", "4", "-size", "2048", "-json",
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

	k.mu.Lock()
	defer k.mu.Unlock()
	require.Len(t, k.msgs, 50, "all 50 arrive")
	require.Equal(t, 4, k.conns, "each session is reused")
	require.Equal(t, 4, r.Connections)
	for _, m := range k.msgs {
		require.Len(t, m, 2048)
		msg, err := mail.ReadMessage(bytes.NewReader(m))
		require.NoError(t, err)
		require.Equal(t, "Alice <alice@gmail.com>", msg.Header.Get("From"))
	}
}

func TestRunReportsErrors(t *testing.T) {
	k := startSink(t, 5) // every 5th MAIL: 451
	var out, errb bytes.Buffer
	code := run([]string{"-addr", k.addr, "-n", "20", "-c", "2", "-size", "1000"}, &out, &errb)
	require.Equal(t, 1, code, "failures make the exit status 1")
	require.Contains(t, out.String(), "ok 16, failed 4")
	require.Contains(t, out.String(), "errors: 451=4")
	require.Contains(t, out.String(), "msg/s")
	require.Contains(t, out.String(), "latency: p50 ")
	k.mu.Lock()
	defer k.mu.Unlock()
	require.Len(t, k.msgs, 16)
	require.Equal(t, 2, k.conns, "a refusal does not cost the session")
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
