package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"relay/internal/policy"
	"relay/internal/spool"
)

// names gathers the registry and returns the metric families by name.
func names(t *testing.T, m *Metrics) map[string]bool {
	t.Helper()
	mfs, err := m.Registry().Gather()
	require.NoError(t, err)
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
	}
	return got
}

func TestRegistry(t *testing.T) {
	m := New()
	m.Received()
	m.Rewritten(policy.FallbackGlobal)
	m.Rewritten(policy.FallbackGlobal)
	m.Rewritten(policy.FallbackUnit)
	m.Deliveries(3, 1, 2)
	m.SPFEvaluated()
	m.CacheHit()
	m.CacheHit()
	m.SessionOpened()
	m.SessionOpened()
	m.SessionClosed()
	m.Rejected(550)
	m.Rejected(550)
	m.Rejected(451)
	m.Rejected(250) // not a rejection
	m.Rejected(999) // out of range: dropped, never a new label
	m.RateLimited()
	for s := range numStages {
		m.Since(s, time.Now().Add(-time.Millisecond))
	}
	oldest := time.Now().Add(-time.Minute)
	m.WatchSpool(func() spool.Stats { return spool.Stats{Depth: 7, Oldest: oldest} })

	got := names(t, m)
	for _, n := range []string{
		"relay_messages_received_total", "relay_messages_rewritten_total", "relay_deliveries_total",
		"relay_spool_messages", "relay_spool_oldest_seconds", "relay_spf_evaluations_total",
		"relay_policy_cache_hits_total", "relay_smtp_sessions", "relay_smtp_rejections_total",
		"relay_rate_limited_total", "relay_stage_seconds",
		"go_goroutines", "process_cpu_seconds_total",
	} {
		assert.True(t, got[n], "%s not gathered", n)
	}

	assert.Equal(t, 1.0, testutil.ToFloat64(m.received))
	assert.Equal(t, 2.0, testutil.ToFloat64(m.rewritten.WithLabelValues("fallback-global")))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.rewritten.WithLabelValues("fallback-unit")))
	assert.Equal(t, 3.0, testutil.ToFloat64(m.delivered))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.deferred))
	assert.Equal(t, 2.0, testutil.ToFloat64(m.bounced))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.spfEvals))
	assert.Equal(t, 2.0, testutil.ToFloat64(m.cacheHits))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.sessions))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.rateLimited))
	assert.Equal(t, 2, testutil.CollectAndCount(m.rejections), "only the codes sent are exported")
	assert.Equal(t, 2.0, testutil.ToFloat64(m.rejections.WithLabelValues("550")))
	assert.Equal(t, 1.0, testutil.ToFloat64(m.rejections.WithLabelValues("451")))

	assert.NoError(t, testutil.CollectAndCompare(&m.spool, strings.NewReader(`
# HELP relay_spool_messages Messages in the spool not yet done (delivered or bounced for every recipient).
# TYPE relay_spool_messages gauge
relay_spool_messages 7
`), "relay_spool_messages"))
	age := 0.0
	mfs, err := m.Registry().Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		switch mf.GetName() {
		case "relay_spool_oldest_seconds":
			age = mf.GetMetric()[0].GetGauge().GetValue()
		case "relay_stage_seconds":
			require.Len(t, mf.GetMetric(), int(numStages))
			for _, s := range mf.GetMetric() {
				assert.Equal(t, uint64(1), s.GetHistogram().GetSampleCount(), s.GetLabel()[0].GetValue())
			}
		}
	}
	assert.InDelta(t, 60, age, 5)
}

func TestSpoolUnwatched(t *testing.T) {
	got := names(t, New())
	assert.False(t, got["relay_spool_messages"], "no spool (direct mode, dry run): not exported")
	assert.True(t, got["relay_smtp_sessions"])
}

func TestNil(t *testing.T) {
	var m *Metrics
	assert.NotPanics(t, func() {
		m.Received()
		m.Rewritten(policy.FallbackGlobal)
		m.Deliveries(1, 1, 1)
		m.SPFEvaluated()
		m.CacheHit()
		m.SessionOpened()
		m.SessionClosed()
		m.Rejected(550)
		m.RateLimited()
		m.Since(StageSign, time.Now())
		m.WatchSpool(nil)
	})
}

func TestHandler(t *testing.T) {
	m := New()
	m.Received()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Contains(t, string(body), "relay_messages_received_total 1\n")
	assert.Contains(t, string(body), "# TYPE relay_stage_seconds histogram")
}

// The hot-path methods allocate nothing once their label children exist.
func TestNoAllocs(t *testing.T) {
	m := New()
	m.Rejected(550)
	start := time.Now()
	n := testing.AllocsPerRun(100, func() {
		m.Received()
		m.Rewritten(policy.FallbackGlobal)
		m.Deliveries(1, 0, 0)
		m.Rejected(550)
		m.Since(StagePolicy, start)
	})
	assert.Zero(t, n)
}

// BenchmarkPerMessage is everything the relay counts for one message of one recipient,
// rewritten, spooled and delivered: the cost metrics add to each message.
func BenchmarkPerMessage(b *testing.B) {
	m := New()
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		m.SessionOpened()
		m.CacheHit()
		m.Since(StagePolicy, start)
		m.Since(StageSign, start)
		m.Since(StageSpool, start)
		m.Received()
		m.Rewritten(policy.FallbackGlobal)
		m.Since(StageDeliver, start)
		m.Deliveries(1, 0, 0)
		m.SessionClosed()
	}
}
