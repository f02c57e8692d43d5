package smtpd

import (
	"io"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// metered is the session go-smtp is given: it counts every failure reply this package
// decides on, since all of them leave through a Session method, a SASL step, newSession or
// refuse. The replies go-smtp makes up itself (command syntax and sequence, a SIZE= or a
// recipient count over the limit, its timeouts) never pass through the relay's code and are
// not counted: the only place that sees them is the connection, which under TLS carries
// ciphertext.
type metered struct{ *session }

var (
	_ smtp.Session     = metered{}
	_ smtp.AuthSession = metered{}
)

func (m metered) Mail(from string, opts *smtp.MailOptions) error {
	return m.srv.counted(m.session.Mail(from, opts))
}

func (m metered) Rcpt(to string, opts *smtp.RcptOptions) error {
	return m.srv.counted(m.session.Rcpt(to, opts))
}

func (m metered) Data(r io.Reader) error { return m.srv.counted(m.session.Data(r)) }

func (m metered) Auth(mech string) (sasl.Server, error) {
	srv, err := m.session.Auth(mech)
	if err != nil {
		return nil, m.srv.counted(err)
	}
	return meteredSASL{srv, m.srv}, nil
}

// meteredSASL counts the failure replies of an AUTH exchange (535, 454, 421, 501).
type meteredSASL struct {
	sasl.Server
	srv *Server
}

func (m meteredSASL) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := m.Server.Next(response)
	return challenge, done, m.srv.counted(err)
}

// counted counts err's reply code when it is a failure and returns err as it is. go-smtp
// type-asserts what it gets (see toSMTP), and so does this.
func (s *Server) counted(err error) error {
	if se, ok := err.(*smtp.SMTPError); ok && s.Metrics != nil {
		s.Metrics.Rejected(se.Code) // a 250 from Data is not counted
	}
	return err
}
