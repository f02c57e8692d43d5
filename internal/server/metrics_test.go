package server

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"relay/internal/authz"
)

// gathered is one scrape of a server's registry: value returns a counter or gauge (0 when
// absent), count the observations of a histogram.
type gathered map[string]*dto.MetricFamily

func gather(t *testing.T, s *Server) gathered {
	t.Helper()
	mfs, err := s.Metrics().Registry().Gather()
	require.NoError(t, err)
	g := gathered{}
	for _, mf := range mfs {
		g[mf.GetName()] = mf
	}
	return g
}

// find returns the series of name whose labels include labels ("k=v" pairs), or nil.
func (g gathered) find(name string, labels ...string) *dto.Metric {
	mf := g[name]
	if mf == nil {
		return nil
	}
next:
	for _, m := range mf.GetMetric() {
		for _, want := range labels {
			k, v, _ := strings.Cut(want, "=")
			found := false
			for _, l := range m.GetLabel() {
				found = found || (l.GetName() == k && l.GetValue() == v)
			}
			if !found {
				continue next
			}
		}
		return m
	}
	return nil
}

func (g gathered) value(name string, labels ...string) float64 {
	m := g.find(name, labels...)
	switch {
	case m == nil:
		return 0
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	}
	return 0
}

func (g gathered) count(name string, labels ...string) uint64 {
	return g.find(name, labels...).GetHistogram().GetSampleCount()
}

// TestMetricsEndToEnd sends real mail through a spool-mode relay to a real upstream and
// checks that every metric moved by exactly what happened: messages received and
// rewritten, deliveries (with a bounce and its DSN), SPF evaluations and cache hits,
// rejections by code, the rate limit, open sessions, the spool, and each stage's latency.
func TestMetricsEndToEnd(t *testing.T) {
	// Five MAIL commands from loopback are allowed: the four messages and the bad RCPT's.
	e := startRelay(t, "spool", func(s string) string {
		return strings.Replace(s, "max_recipients = 5\n", "max_recipients = 5\nrate_per_network = \"5/h\"\n", 1)
	})
	auth := e.srv.Pipeline().State().Auth.(*authz.Authorizer)
	e.sink.Reject("nobody@dest.example", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"})
	send := func(from, msg string, to ...string) {
		t.Helper()
		reply, err := e.send(from, to, msg)
		require.NoError(t, err)
		require.Equal(t, 250, reply.Code, reply.Message)
	}

	// 1. An allowed From: kept, no DNS (listed domains cost no lookup).
	send("alice@example.com", fmt.Sprintf(msgTmpl, "alice@example.com"), "a@dest.example")
	g := gather(t, e.srv)
	assert.Equal(t, 0.0, g.value("relay_spf_evaluations_total"))

	// 2. A From whose SPF is softfail: rewritten to the global fallback after one SPF
	// evaluation (and a delegation check, which is not an SPF evaluation).
	before := auth.Stats()
	send("alice@softfail.example", fmt.Sprintf(msgTmpl, "alice@softfail.example"), "b@dest.example")
	g = gather(t, e.srv)
	assert.Equal(t, 1.0, g.value("relay_spf_evaluations_total"))
	assert.Equal(t, 2.0, g.value("relay_messages_received_total"))
	assert.Equal(t, 1.0, g.value("relay_messages_rewritten_total", "reason=fallback-global"))
	hits := g.value("relay_policy_cache_hits_total")
	after := auth.Stats()
	// Every check of message 2 was an evaluation or a cache hit (one client at a time:
	// nobody to share an evaluation with).
	assert.Equal(t, after.Checks-before.Checks, after.Evaluations-before.Evaluations+uint64(hits))

	// 3. The same domain again: every check is answered from the cache.
	before = auth.Stats()
	send("alice@softfail.example", fmt.Sprintf(msgTmpl, "alice@softfail.example"), "c@dest.example")
	g = gather(t, e.srv)
	after = auth.Stats()
	assert.Equal(t, 1.0, g.value("relay_spf_evaluations_total"), "answered from the cache")
	assert.Equal(t, before.Evaluations, after.Evaluations)
	require.NotZero(t, after.Checks-before.Checks)
	assert.Equal(t, hits+float64(after.Checks-before.Checks), g.value("relay_policy_cache_hits_total"))
	assert.Equal(t, 2.0, g.value("relay_messages_rewritten_total", "reason=fallback-global"))

	// 4. Two recipients, one refused upstream with 550: one delivery, one bounce, whose DSN
	// (sent from <>, through the pipeline but not received from a client) is delivered too.
	send("alice@example.com", fmt.Sprintf(msgTmpl, "alice@example.com"), "d@dest.example", "nobody@dest.example")

	// Front-end failures: a recipient over RFC 5321's limits (501), AUTH within a
	// transaction (503), a failed AUTH (535), a MAIL over the rate limit (451), DATA without
	// a recipient (502, from go-smtp itself).
	c, err := smtp.Dial(e.addr)
	require.NoError(t, err)
	require.NoError(t, c.Hello("app.test"))
	require.NoError(t, c.Mail("alice@example.com", nil))
	reply, _ := asSMTP(c.Rcpt(strings.Repeat("x", 65)+"@dest.example", nil))
	require.NotNil(t, reply)
	require.Equal(t, 501, reply.Code)
	require.Contains(t, reply.Message, "Local part too long")
	reply, _ = asSMTP(c.Auth(sasl.NewPlainClient("", "crm", "wrong")))
	require.NotNil(t, reply)
	require.Equal(t, 503, reply.Code, "AUTH in a transaction: %s", reply.Message)
	require.NoError(t, c.Reset())
	reply, _ = asSMTP(c.Auth(sasl.NewPlainClient("", "crm", "wrong")))
	require.NotNil(t, reply)
	require.Equal(t, 535, reply.Code)
	reply, _ = asSMTP(c.Mail("alice@example.com", nil))
	require.NotNil(t, reply)
	require.Equal(t, 451, reply.Code, reply.Message)
	// A reply go-smtp makes up itself is counted too.
	_, err = c.Data()
	reply, _ = asSMTP(err)
	require.NotNil(t, reply)
	require.Equal(t, 502, reply.Code, "DATA without a recipient: %s", reply.Message)
	g = gather(t, e.srv)
	assert.Equal(t, 1.0, g.value("relay_smtp_sessions"), "this client's connection is open")
	require.NoError(t, c.Quit())

	// Messages 1-4 to their five recipients, less the refused one, plus the DSN.
	e.sink.Wait(t, 5)
	require.Eventually(t, func() bool {
		g = gather(t, e.srv)
		return g.value("relay_deliveries_total", "result=delivered") == 5 &&
			g.value("relay_spool_messages") == 0 && g.value("relay_smtp_sessions") == 0
	}, 10*time.Second, 10*time.Millisecond, "delivered %v, spooled %v, sessions %v",
		g.value("relay_deliveries_total", "result=delivered"), g.value("relay_spool_messages"), g.value("relay_smtp_sessions"))

	assert.Equal(t, 4.0, g.value("relay_messages_received_total"))
	assert.Equal(t, 2.0, g.value("relay_messages_rewritten_total", "reason=fallback-global"))
	require.NotNil(t, g.find("relay_messages_rewritten_total", "reason=fallback-unit"), "exported at 0 from the start")
	assert.Equal(t, 0.0, g.value("relay_messages_rewritten_total", "reason=fallback-unit"))
	assert.Equal(t, 5.0, g.value("relay_deliveries_total", "result=delivered"))
	assert.Equal(t, 1.0, g.value("relay_deliveries_total", "result=bounced"))
	assert.Equal(t, 0.0, g.value("relay_deliveries_total", "result=deferred"))
	// The local part, and go-smtp's "501 Negotiation cancelled" after each failed AUTH
	// (the go-smtp client sends "*" to end the exchange when AUTH fails).
	assert.Equal(t, 3.0, g.value("relay_smtp_rejections_total", "code=501"))
	assert.Equal(t, 1.0, g.value("relay_smtp_rejections_total", "code=503"))
	assert.Equal(t, 1.0, g.value("relay_smtp_rejections_total", "code=535"))
	assert.Equal(t, 1.0, g.value("relay_smtp_rejections_total", "code=451"))
	assert.Equal(t, 1.0, g.value("relay_smtp_rejections_total", "code=502"))
	assert.Len(t, g["relay_smtp_rejections_total"].GetMetric(), 5, "no other code was sent")
	assert.Equal(t, 1.0, g.value("relay_rate_limited_total"))
	assert.Equal(t, 0.0, g.value("relay_spool_oldest_seconds"))

	// Five messages through the pipeline (four received, one DSN), each spooled and
	// delivered in one attempt.
	for _, stage := range []string{"policy", "sign", "spool", "deliver"} {
		assert.Equal(t, uint64(5), g.count("relay_stage_seconds", "stage="+stage), stage)
	}
	assert.NotNil(t, g["go_goroutines"])
}

// In direct mode the upstream transaction is the deliver stage, nothing is spooled, and a
// refusal passed on to the client is counted by its class.
func TestMetricsDirect(t *testing.T) {
	e := startRelay(t, "direct", nil)
	msg := fmt.Sprintf(msgTmpl, "alice@example.com")
	reply, err := e.send("alice@example.com", []string{"a@dest.example", "b@dest.example"}, msg)
	require.NoError(t, err)
	require.Equal(t, 250, reply.Code)
	e.sink.Reject("nobody@dest.example", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"})
	reply, err = e.send("alice@example.com", []string{"nobody@dest.example"}, msg)
	require.NoError(t, err)
	require.Equal(t, 550, reply.Code)

	g := gather(t, e.srv)
	assert.Equal(t, 1.0, g.value("relay_messages_received_total"))
	assert.Equal(t, 2.0, g.value("relay_deliveries_total", "result=delivered"))
	assert.Equal(t, 1.0, g.value("relay_deliveries_total", "result=bounced"))
	assert.Equal(t, 1.0, g.value("relay_smtp_rejections_total", "code=550"))
	assert.Equal(t, uint64(2), g.count("relay_stage_seconds", "stage=deliver"))
	assert.Equal(t, uint64(0), g.count("relay_stage_seconds", "stage=spool"))
	assert.Nil(t, g["relay_spool_messages"], "no spool in direct mode")
}
