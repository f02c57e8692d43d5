package dsn

import (
	"context"
	"os"

	"relay/internal/pipeline"
	"relay/internal/rewrite"
)

// Processor is the message path a report goes through; *pipeline.Pipeline satisfies it.
type Processor interface {
	Process(ctx context.Context, in pipeline.Input) (pipeline.Result, error)
}

// Sender sends reports through the relay's own pipeline, as the queue's Bouncer.
type Sender struct {
	// Hostname is the Reporting-MTA and the host of the report's Received field (default:
	// os.Hostname).
	Hostname string
	Pipeline Processor
}

// Bounce builds the report of r and hands it to the pipeline for r.Sender, from the null
// sender <> (RFC 3464 §2, RFC 5321 §4.5.5), like a message submitted on this host: it is
// rewritten, signed and submitted (spooled) as any message. It returns once the pipeline's
// Submitter has it as safe as an accepted message, or the error.
func (s *Sender) Bounce(ctx context.Context, r Report) error {
	host := s.Hostname
	if host == "" {
		host = "localhost"
		if h, err := os.Hostname(); err == nil && h != "" {
			host = h
		}
	}
	_, err := s.Pipeline.Process(ctx, pipeline.Input{To: []string{r.Sender}, Data: Build(r, host),
		Received: rewrite.Received{Helo: host, ClientIP: "127.0.0.1", Proto: "LOCAL"}, Client: "dsn"})
	return err
}
