// Package metrics owns the relay's Prometheus metrics (SPEC §10): one registry per running
// server, the counters, gauges and histograms the stages update, and the handler that
// serves them. It keeps no global state (no default registry) and decides nothing: the
// stages say what happened through the methods of a *Metrics, each of which does nothing on
// a nil *Metrics, so a stage built without metrics (tests, `relay send`) pays nothing.
package metrics

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"relay/internal/policy"
	"relay/internal/spool"
)

// Stage is a step of a message's way through the relay whose latency is measured.
type Stage int

const (
	StagePolicy  Stage = iota // policy.Decide, with its live SPF and delegation checks
	StageSign                 // the DKIM signatures
	StageSpool                // durable in the spool (spool.Put, its fdatasync included)
	StageDeliver              // one attempt at the upstream (in direct mode: the whole transaction)
	numStages
)

var stageNames = [numStages]string{"policy", "sign", "spool", "deliver"}

func (s Stage) String() string { return stageNames[s] }

// stageBuckets spans the stages: a cached policy decision takes microseconds, an Ed25519
// signature tens of them, RSA-2048 about a millisecond, a spool sync a few, an upstream
// transaction up to the timeouts.
var stageBuckets = []float64{
	.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005,
	.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30,
}

// rewriteReasons are the policy reasons of a rewritten From (SPEC §4); their counters are
// resolved once.
var rewriteReasons = [...]policy.Reason{policy.FallbackUnit, policy.FallbackGlobal}

// Metrics is the relay's set of metrics on a registry of its own. The hot-path counters
// are resolved once (no label lookup per message); a nil *Metrics counts nothing.
type Metrics struct {
	reg *prometheus.Registry

	received    prometheus.Counter
	rewritten   *prometheus.CounterVec
	rewrittenBy [len(rewriteReasons)]prometheus.Counter
	delivered   prometheus.Counter
	deferred    prometheus.Counter
	bounced     prometheus.Counter
	spfEvals    prometheus.Counter
	cacheHits   prometheus.Counter
	sessions    prometheus.Gauge
	rejections  *prometheus.CounterVec
	// rejectedBy caches the child of each reply code 400-599 once it has been used, so
	// only codes actually sent appear, and each costs one label lookup in its lifetime.
	rejectedBy  [200]atomic.Pointer[prometheus.Counter]
	rateLimited prometheus.Counter
	stages      [numStages]prometheus.Observer

	spool spoolCollector
}

// New returns a set of metrics on a new registry, which also carries the Go runtime and
// process collectors.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.received = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "relay_messages_received_total",
		Help: "Messages accepted from SMTP clients: answered 250 (durable in the spool, or accepted upstream in direct mode), or processed in a dry run.",
	})
	m.rewritten = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "relay_messages_rewritten_total",
		Help: "Received messages whose From was rewritten to a fallback, by policy reason.",
	}, []string{"reason"})
	for i, r := range rewriteReasons {
		m.rewrittenBy[i] = m.rewritten.WithLabelValues(string(r))
	}
	deliveries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "relay_deliveries_total",
		Help: "Recipient outcomes of delivery attempts: delivered (2xx), deferred (left for a retry), bounced (failed for good).",
	}, []string{"result"})
	m.delivered = deliveries.WithLabelValues("delivered")
	m.deferred = deliveries.WithLabelValues("deferred")
	m.bounced = deliveries.WithLabelValues("bounced")
	m.spfEvals = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "relay_spf_evaluations_total",
		Help: "SPF checks evaluated against the DNS (not answered from the cache or by another caller's evaluation).",
	})
	m.cacheHits = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "relay_policy_cache_hits_total",
		Help: "SPF and DKIM delegation checks answered from the per-domain cache.",
	})
	m.sessions = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "relay_smtp_sessions",
		Help: "Open SMTP client connections.",
	})
	m.rejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "relay_smtp_rejections_total",
		Help: "4xx and 5xx replies the SMTP front end gave, by reply code.",
	}, []string{"code"})
	m.rateLimited = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "relay_rate_limited_total",
		Help: "MAIL commands refused because a per-user or per-network rate limit was exceeded.",
	})
	stages := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "relay_stage_seconds",
		Help:    "Time a message spent in each stage: policy, sign, spool, deliver.",
		Buckets: stageBuckets,
	}, []string{"stage"})
	for s := range numStages {
		m.stages[s] = stages.WithLabelValues(s.String())
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.received, m.rewritten, deliveries, m.spfEvals, m.cacheHits,
		m.sessions, m.rejections, m.rateLimited, stages, &m.spool,
	)
	return m
}

// Registry is the registry the metrics are on (tests gather from it).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus exposition format (for /metrics).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Received counts a message accepted from a client.
func (m *Metrics) Received() {
	if m != nil {
		m.received.Inc()
	}
}

// Rewritten counts a received message whose From was rewritten, for reason.
func (m *Metrics) Rewritten(reason policy.Reason) {
	if m == nil {
		return
	}
	for i, r := range rewriteReasons {
		if r == reason {
			m.rewrittenBy[i].Inc()
			return
		}
	}
	m.rewritten.WithLabelValues(string(reason)).Inc() // a reason added to policy later
}

// Deliveries counts the recipients of one attempt by outcome.
func (m *Metrics) Deliveries(delivered, deferred, bounced int) {
	if m == nil {
		return
	}
	if delivered > 0 {
		m.delivered.Add(float64(delivered))
	}
	if deferred > 0 {
		m.deferred.Add(float64(deferred))
	}
	if bounced > 0 {
		m.bounced.Add(float64(bounced))
	}
}

// SPFEvaluated counts an SPF check that went to the DNS.
func (m *Metrics) SPFEvaluated() {
	if m != nil {
		m.spfEvals.Inc()
	}
}

// CacheHit counts an SPF or delegation check answered from the cache.
func (m *Metrics) CacheHit() {
	if m != nil {
		m.cacheHits.Inc()
	}
}

// SessionOpened and SessionClosed track the open SMTP connections.
func (m *Metrics) SessionOpened() {
	if m != nil {
		m.sessions.Inc()
	}
}

func (m *Metrics) SessionClosed() {
	if m != nil {
		m.sessions.Dec()
	}
}

// Rejected counts a reply with code; only 4xx and 5xx are counted, so a 250 may pass
// through too.
func (m *Metrics) Rejected(code int) {
	if m == nil || code < 400 || code > 599 {
		return
	}
	p := &m.rejectedBy[code-400]
	c := p.Load()
	if c == nil {
		// Racing callers resolve the same child: WithLabelValues returns one per label.
		v := m.rejections.WithLabelValues(strconv.Itoa(code))
		c = &v
		p.Store(c)
	}
	(*c).Inc()
}

// RateLimited counts a MAIL refused by a rate limit.
func (m *Metrics) RateLimited() {
	if m != nil {
		m.rateLimited.Inc()
	}
}

// Since records the time since start as the latency of stage.
func (m *Metrics) Since(stage Stage, start time.Time) {
	if m != nil {
		m.stages[stage].Observe(time.Since(start).Seconds())
	}
}

// WatchSpool makes relay_spool_messages and relay_spool_oldest_seconds read stats at
// each scrape (the spool counts its messages anyway; nothing is counted twice). Without
// a spool (direct mode, dry run) the two are not exported.
func (m *Metrics) WatchSpool(stats func() spool.Stats) {
	if m != nil {
		m.spool.stats.Store(&stats)
	}
}

// spoolCollector reads the spool's Stats when scraped.
type spoolCollector struct {
	stats atomic.Pointer[func() spool.Stats]
}

var (
	spoolMessagesDesc = prometheus.NewDesc("relay_spool_messages",
		"Messages in the spool not yet done (delivered or bounced for every recipient).", nil, nil)
	spoolOldestDesc = prometheus.NewDesc("relay_spool_oldest_seconds",
		"Age of the oldest message in the spool; 0 when it is empty.", nil, nil)
)

func (c *spoolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- spoolMessagesDesc
	ch <- spoolOldestDesc
}

func (c *spoolCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.stats.Load()
	if f == nil {
		return
	}
	st := (*f)()
	age := 0.0
	if !st.Oldest.IsZero() {
		age = max(time.Since(st.Oldest).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(spoolMessagesDesc, prometheus.GaugeValue, float64(st.Depth))
	ch <- prometheus.MustNewConstMetric(spoolOldestDesc, prometheus.GaugeValue, age)
}
