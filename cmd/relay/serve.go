package main

import (
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"relay/internal/config"
	"relay/internal/httpd"
	"relay/internal/server"
)

// shutdownGrace bounds how long SIGTERM waits for sessions and deliveries in flight.
const shutdownGrace = 20 * time.Second

func cmdServe(e env) int {
	fs := e.flags("serve")
	cfgPath := configFlag(fs)
	dry := fs.Bool("dry-run", false, "run every message through policy, rewrite and signing; spool and send nothing")
	if code, ok := e.parse(fs); !ok {
		return code
	}
	cfg, ok := load(*cfgPath, e.stderr)
	if !ok {
		return 1
	}
	log := newLogger(cfg, e.stderr)
	if path := os.Getenv("RELAY_CPUPROFILE"); path != "" {
		// For performance work: a CPU profile of the whole run, written at shutdown.
		stop, err := cpuProfile(path)
		if err != nil {
			fmt.Fprintf(e.stderr, "relay serve: RELAY_CPUPROFILE: %v\n", err)
			return 1
		}
		defer stop()
	}
	srv, err := server.New(cfg, server.Options{DryRun: *dry, Log: log, HTTP: httpd.Options{DNS: dnsJSON}})
	if err != nil {
		fmt.Fprintf(e.stderr, "relay serve: %v\n", err)
		return 1
	}
	log.Info("relay started", "listen", srv.Addrs(), "http", srv.HTTPAddr(), "mode", srv.Mode(), "upstream", cfg.Upstream.Address, "config", *cfgPath)

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	for {
		select {
		case err := <-srv.Err():
			log.Error("listener failed", "err", err)
			srv.Shutdown(shutdownGrace)
			return 1
		case s := <-sigs:
			if s == syscall.SIGHUP {
				restart, err := reload(srv, *cfgPath)
				switch {
				case err != nil:
					log.Error("reload refused; the running configuration stays", "config", *cfgPath, "err", err)
				case len(restart) > 0:
					log.Warn("configuration reloaded, but these changes take effect only after a restart", "config", *cfgPath, "settings", restart)
				default:
					log.Info("configuration reloaded", "config", *cfgPath)
				}
				continue
			}
			log.Info("shutting down", "signal", s.String(), "grace", shutdownGrace)
			srv.Shutdown(shutdownGrace)
			return 0
		}
	}
}

func reload(srv *server.Server, path string) ([]string, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	return srv.Reload(cfg)
}

func cpuProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
