package smtptest

import (
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

func TestKeepsAndCounts(t *testing.T) {
	s := Start(t)
	r, err := Send(s.Addr, "a@x.example", []string{"b@y.example", "c@y.example"}, "Subject: hi\r\n\r\nbody\r\n")
	if err != nil || r.Code != 250 {
		t.Fatalf("Send: %v %v", r, err)
	}
	msgs := s.Wait(t, 1)
	if m := msgs[0]; m.From != "a@x.example" || len(m.To) != 2 || string(Body(m.Data)) != "body\r\n" {
		t.Fatalf("message %+v", m)
	}
	if got := Header(msgs[0].Data, "subject"); len(got) != 1 || got[0] != "hi" {
		t.Fatalf("Subject %q", got)
	}
	if st := s.Stats(); st != (Stats{Conns: 1, MaxOpen: 1, Open: st.Open, Mails: 1, Bodies: 1, Messages: 1}) {
		t.Fatalf("stats %+v", st)
	}
	if h := s.Helos(); len(h) != 1 || h[0] != "app.test" {
		t.Fatalf("helos %q", h)
	}
}

func TestRefusals(t *testing.T) {
	s := Start(t)
	s.RejectRcpts(map[string]*smtp.SMTPError{"no@y.example": {Code: 550, Message: "no"}})
	if r, _ := Send(s.Addr, "a@x.example", []string{"no@y.example"}, "\r\n"); r == nil || r.Code != 550 {
		t.Fatalf("RCPT: %v", r)
	}
	s.OnData(func(Message) error { return &smtp.SMTPError{Code: 554, Message: "spam"} })
	if r, _ := Send(s.Addr, "a@x.example", []string{"ok@y.example"}, "\r\n"); r == nil || r.Code != 554 {
		t.Fatalf("DATA: %v", r)
	}
	s.OnMail(func(string) error { return ErrDrop })
	if _, err := Send(s.Addr, "a@x.example", []string{"ok@y.example"}, "\r\n"); err == nil {
		t.Fatal("ErrDrop: the connection should have been closed without a reply")
	}
	if st := s.Stats(); st.Mails != 3 || st.Bodies != 1 || st.Messages != 0 || len(s.Messages()) != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestStall(t *testing.T) {
	s := Start(t)
	s.Stall(StageRcpt)
	done := make(chan struct{})
	go func() {
		Send(s.Addr, "a@x.example", []string{"b@y.example"}, "\r\n")
		close(done)
	}()
	<-s.Stalled()
	select {
	case <-done:
		t.Fatal("a stalled session replied")
	case <-time.After(50 * time.Millisecond):
	}
	s.Release()
	<-done
	s.Wait(t, 1)
}

func TestAuth(t *testing.T) {
	s := Start(t, WithUsers(map[string]string{"u": "p"}), WithAuth(sasl.Plain, sasl.Login), RequireAuth(), RecordWire())
	c, err := smtp.Dial(s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r, _ := SendOn(c, "a@x.example", []string{"b@y.example"}, "\r\n"); r == nil || r.Code != 502 {
		t.Fatalf("MAIL before AUTH: %v", r)
	}
	if err := c.Auth(sasl.NewLoginClient("u", "p")); err != nil {
		t.Fatal(err)
	}
	if r, _ := SendOn(c, "a@x.example", []string{"b@y.example"}, "\r\n"); r == nil || r.Code != 250 {
		t.Fatalf("after AUTH: %v", r)
	}
	if m := s.Messages(); len(m) != 1 || m[0].User != "u" {
		t.Fatalf("messages %+v", m)
	}
	if a := s.Auths(); len(a) != 1 || a[0] != (Auth{Mech: sasl.Login, User: "u", OK: true}) {
		t.Fatalf("auths %+v", a)
	}
	if !strings.Contains(string(s.Wire()), "AUTH LOGIN") {
		t.Fatalf("wire %q", s.Wire())
	}
}

func TestTLS(t *testing.T) {
	for _, implicit := range []bool{false, true} {
		opt := WithTLS(nil)
		if implicit {
			opt = WithImplicitTLS(nil)
		}
		s := Start(t, opt)
		cfg := &tls.Config{RootCAs: s.RootCAs(), ServerName: "127.0.0.1"}
		var c *smtp.Client
		var err error
		if implicit {
			c, err = smtp.DialTLS(s.Addr, cfg)
		} else {
			c, err = smtp.DialStartTLS(s.Addr, cfg)
		}
		if err != nil {
			t.Fatalf("implicit %v: %v", implicit, err)
		}
		if r, err := SendOn(c, "a@x.example", []string{"b@y.example"}, "\r\n"); err != nil || r.Code != 250 {
			t.Fatalf("implicit %v: %v %v", implicit, r, err)
		}
		c.Close()
		if m := s.Messages(); len(m) != 1 || !m[0].TLS || s.TLSConfig() == nil || s.Conns() != 1 {
			t.Fatalf("implicit %v: %+v, %d conns", implicit, m, s.Conns())
		}
	}
}

func TestRestart(t *testing.T) {
	s := Start(t)
	c, err := smtp.Dial(s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("app.test"); err != nil {
		t.Fatal(err)
	}
	s.Restart(t)
	if err := c.Noop(); err == nil {
		t.Fatal("the connection survived the restart")
	}
	if _, err := Send(s.Addr, "a@x.example", []string{"b@y.example"}, "\r\n"); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Conns != 2 || st.Messages != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestDiscard(t *testing.T) {
	s := Start(t, Discard())
	var to []string
	s.OnData(func(m Message) error {
		if m.Data != nil {
			return errors.New("Data kept under Discard")
		}
		to = append(to, m.To...)
		return nil
	})
	c, err := smtp.Dial(s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, r := range []string{"b@y.example", "c@y.example"} {
		if r, err := SendOn(c, "a@x.example", []string{r}, "Subject: x\r\n\r\n"+strings.Repeat(strings.Repeat("y", 76)+"\r\n", 1000)); err != nil || r.Code != 250 {
			t.Fatalf("%v %v", r, err)
		}
	}
	if s.Count() != 2 || len(s.Messages()) != 0 || strings.Join(to, ",") != "b@y.example,c@y.example" {
		t.Fatalf("count %d, messages %d, to %q", s.Count(), len(s.Messages()), to)
	}
}
