package server

import (
	"context"
	"errors"
	"time"

	"relay/internal/deliver"
	"relay/internal/metrics"
)

// meteredDirect is direct delivery with its metrics: the whole upstream transaction is the
// deliver stage, and every recipient is delivered (250), deferred (a 4xx or a fault: the
// client was told to retry) or bounced (a 5xx passed on to the client): in direct mode
// the relay keeps nothing to retry, so those are the client's outcomes.
type meteredDirect struct {
	d *deliver.Direct
	m *metrics.Metrics
}

func (md meteredDirect) Submit(ctx context.Context, id, from string, to []string, data []byte) error {
	start := time.Now()
	err := md.d.Submit(ctx, id, from, to, data)
	md.m.Since(metrics.StageDeliver, start)
	var de *deliver.Error
	switch {
	case err == nil:
		md.m.Deliveries(len(to), 0, 0)
	case errors.As(err, &de) && !de.Temporary():
		md.m.Deliveries(0, 0, len(to))
	default:
		md.m.Deliveries(0, len(to), 0)
	}
	return err
}
