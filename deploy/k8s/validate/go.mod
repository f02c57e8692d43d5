// The checks deploy/ci.sh runs on deploy/k8s: a module of its own, so that the relay's
// go.mod does not grow. Its two dependencies are the relay's own, at the relay's versions.
module relaydeploy/k8s/validate

go 1.26.0

require (
	github.com/BurntSushi/toml v1.6.0
	go.yaml.in/yaml/v3 v3.0.5
)
