package deliver

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/smtptest"
)

func TestErrorSMTPReply(t *testing.T) {
	for _, tc := range []struct {
		name      string
		err       *Error
		code      int
		enh       [3]int
		msg       string
		temporary bool
	}{
		{name: "5xx passed on", err: &Error{Code: 550, Enhanced: [3]int{5, 7, 1}, Msg: "relay denied"},
			code: 550, enh: [3]int{5, 7, 1}, msg: "upstream: relay denied"},
		{name: "4xx passed on", err: &Error{Code: 452, Enhanced: [3]int{4, 3, 1}, Msg: "disk full"},
			code: 452, enh: [3]int{4, 3, 1}, msg: "upstream: disk full", temporary: true},
		{name: "no enhanced code", err: &Error{Code: 554, Msg: "no"},
			code: 554, enh: [3]int{5, 0, 0}, msg: "upstream: no"},
		{name: "enhanced code of the wrong class", err: &Error{Code: 451, Enhanced: [3]int{5, 1, 1}, Msg: "odd"},
			code: 451, enh: [3]int{4, 0, 0}, msg: "upstream: odd", temporary: true},
		{name: "fault", err: &Error{Err: errors.New("connection refused")},
			code: 451, enh: [3]int{4, 4, 1}, msg: "upstream unavailable", temporary: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, enh, msg := tc.err.SMTPReply()
			require.Equal(t, tc.code, code)
			require.Equal(t, tc.enh, enh)
			require.Equal(t, tc.msg, msg)
			require.Equal(t, tc.temporary, tc.err.Temporary())

			// Callers find it through wrapping, as smtpd does.
			var e *Error
			require.ErrorAs(t, fmt.Errorf("direct delivery X: %w", tc.err), &e)
		})
	}
}

func TestNew(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		up      config.Upstream
		want    any
		wantErr string
	}{
		{name: "pool", up: config.Upstream{Address: "smtp.example.net:587", TLS: "starttls"}, want: &Pool{}},
		{name: "relative outbox", up: config.Upstream{Address: "file:./outbox"}, want: &Outbox{}},
		{name: "missing port", up: config.Upstream{Address: "smtp.example.net"}, wantErr: "upstream.address"},
		{name: "bad tls mode", up: config.Upstream{Address: "smtp.example.net:587", TLS: "sometimes"}, wantErr: "upstream.tls"},
		{name: "empty outbox", up: config.Upstream{Address: "file:"}, wantErr: "missing directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(&config.Config{Dir: dir, Upstream: tc.up}, nil)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			defer s.Close()
			require.IsType(t, tc.want, s)
			if o, ok := s.(*Outbox); ok {
				require.Equal(t, filepath.Join(dir, "outbox"), o.dir, "relative to the config file")
				require.DirExists(t, o.dir)
			}
		})
	}
}

func TestDirect(t *testing.T) {
	refusals := map[string]*smtp.SMTPError{
		"bad@dest.example":  {Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"},
		"full@dest.example": {Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "mailbox full"},
	}
	for _, tc := range []struct {
		name  string
		to    []string
		code  int
		reply string
	}{
		{name: "all accepted", to: []string{"a@dest.example", "b@dest.example"}},
		{name: "one refused", to: []string{"a@dest.example", "bad@dest.example", "b@dest.example"},
			code: 550, reply: "upstream: <bad@dest.example>: no such user"},
		{name: "temporary refusal", to: []string{"a@dest.example", "full@dest.example"},
			code: 452, reply: "upstream: <full@dest.example>: mailbox full"},
		{name: "permanent wins", to: []string{"full@dest.example", "bad@dest.example"},
			code: 550, reply: "upstream: <bad@dest.example>: no such user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := startUpstream(t)
			u.RejectRcpts(refusals)
			d := &Direct{Sender: newPool(t, u, nil)}

			err := d.Submit(t.Context(), "MSGID", "app@customer.example", tc.to, testMessage(1))
			if tc.code == 0 {
				require.NoError(t, err)
				require.Len(t, u.Messages(), 1)
				return
			}
			var e *Error
			require.ErrorAs(t, err, &e)
			require.ErrorContains(t, err, "MSGID")
			code, _, reply := e.SMTPReply()
			require.Equal(t, tc.code, code)
			require.Equal(t, tc.reply, reply)
			require.Empty(t, u.Messages(), "all or nothing: nobody gets it")
			require.Zero(t, u.Stats().Bodies, "aborted before DATA")

			// The aborted transaction was reset: the connection delivers the next one.
			require.NoError(t, d.Submit(t.Context(), "NEXT", "app@customer.example", []string{"a@dest.example"}, testMessage(2)))
			require.Len(t, u.Messages(), 1)
			accepted := u.Stats().Conns
			require.Equal(t, 1, accepted)
		})
	}
}

func TestDirectTransactionError(t *testing.T) {
	u := startUpstream(t)
	u.OnData(refuse[smtptest.Message](&smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "spam"}))
	d := &Direct{Sender: newPool(t, u, nil)}
	err := d.Submit(t.Context(), "MSGID", "app@customer.example", []string{"a@dest.example"}, testMessage(1))
	var e *Error
	require.ErrorAs(t, err, &e)
	code, _, reply := e.SMTPReply()
	require.Equal(t, 554, code)
	require.Equal(t, "upstream: spam", reply)
}

// partialSender is a Sender from outside the package: it refuses one recipient and cannot
// abort before DATA.
type partialSender struct{}

func (partialSender) Send(_ context.Context, _ string, to []string, _ []byte) ([]RcptResult, error) {
	res := make([]RcptResult, len(to))
	for i, r := range to {
		res[i] = RcptResult{Rcpt: r, Code: 250}
	}
	res[len(res)-1] = RcptResult{Rcpt: to[len(to)-1], Code: 550, Enhanced: [3]int{5, 1, 1}, Msg: "unknown"}
	return res, nil
}
func (partialSender) Close() error { return nil }

func TestDirectOtherSender(t *testing.T) {
	d := &Direct{Sender: partialSender{}}
	err := d.Submit(t.Context(), "X", "a@b.example", []string{"c@d.example", "e@f.example"}, nil)
	var e *Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, 550, e.Code)
}
