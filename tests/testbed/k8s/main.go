// Command pgml-k8s is a multi-call binary holding the Kubernetes control plane
// used by the pgml-operator test bed: kube-apiserver, kube-controller-manager,
// kubectl and an embedded single-member etcd, all from k8s.io/kubernetes v1.35.4
// and the etcd server version that release requires.
//
// It dispatches on the base name of argv[0], so symlinks named kube-apiserver,
// kube-controller-manager, kubectl and etcd pointing at it behave like the
// upstream binaries. `pgml-k8s <name> [args...]` works too.
//
// One binary instead of four: the four share most of their dependency graph, so
// linking once saves minutes and about 300 MB of disk. Upstream's integration
// tests (and the old hyperkube) link the apiserver and the controllers into one
// process, so their init-time registrations (metrics in component-base's
// legacyregistry, feature gates) do not conflict; etcd's server uses the
// prometheus default registry, which Kubernetes' registry does not share.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	_ "time/tzdata" // for timeZone support in CronJob, as upstream's mains do

	"go.etcd.io/etcd/server/v3/embed"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric registration

	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl: client auth plugins

	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"

	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"
	schedulerapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
)

var commands = map[string]func() int{
	"kube-apiserver":          runAPIServer,
	"kube-controller-manager": runControllerManager,
	"kubectl":                 runKubectl,
	"etcd":                    runEtcd,
	"kubelet":                 runKubelet,
	"kube-proxy":              runProxy,
	"kube-scheduler":          runScheduler,
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := commands[name]; !ok {
		// Called by its own name: `pgml-k8s <command> [args...]`.
		if len(os.Args) < 2 || commands[os.Args[1]] == nil {
			fmt.Fprintf(os.Stderr, "usage: %s {kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl|etcd} [args...]\n"+
				"(or call it through a symlink with one of those names)\n", name)
			os.Exit(2)
		}
		name = os.Args[1]
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	os.Exit(commands[name]())
}

// runAPIServer is cmd/kube-apiserver/apiserver.go's main.
func runAPIServer() int {
	return cli.Run(apiserverapp.NewAPIServerCommand())
}

// runControllerManager is cmd/kube-controller-manager/controller-manager.go's main.
func runControllerManager() int {
	return cli.Run(kcmapp.NewControllerManagerCommand())
}

// runKubelet is cmd/kubelet/kubelet.go's main: the real nodes of the test bed.
func runKubelet() int {
	return cli.Run(kubeletapp.NewKubeletCommand(context.Background()))
}

// runProxy is cmd/kube-proxy/proxy.go's main: Services on the real nodes.
func runProxy() int {
	return cli.Run(proxyapp.NewProxyCommand())
}

// runScheduler is cmd/kube-scheduler/scheduler.go's main: places the Pods the
// operator does not bind itself (the chart's Deployment, client Pods).
func runScheduler() int {
	return cli.Run(schedulerapp.NewSchedulerCommand())
}

// runKubectl is cmd/kubectl/kubectl.go's main.
func runKubectl() int {
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := kubectlcmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err) // prints the error and exits non-zero
	}
	return 0
}

// runEtcd starts a single-member etcd for tests. Only the flags the test bed
// needs are supported; their names match etcd's own.
func runEtcd() int {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	name := fs.String("name", "default", "member name")
	dataDir := fs.String("data-dir", "", "data directory (required)")
	listenClient := fs.String("listen-client-urls", "http://127.0.0.1:2379", "comma-separated client URLs to listen on")
	advertiseClient := fs.String("advertise-client-urls", "", "comma-separated client URLs to advertise (default: listen-client-urls)")
	listenPeer := fs.String("listen-peer-urls", "http://127.0.0.1:2380", "comma-separated peer URLs to listen on")
	advertisePeer := fs.String("initial-advertise-peer-urls", "", "comma-separated peer URLs to advertise (default: listen-peer-urls)")
	unsafeNoFsync := fs.Bool("unsafe-no-fsync", true, "skip fsync (test data only: fast, not crash safe)")
	quota := fs.Int64("quota-backend-bytes", 0, "backend size quota in bytes (0: etcd's default)")
	logLevel := fs.String("log-level", "warn", "debug, info, warn, error")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "etcd: --data-dir is required")
		return 2
	}
	if *advertiseClient == "" {
		*advertiseClient = *listenClient
	}
	if *advertisePeer == "" {
		*advertisePeer = *listenPeer
	}

	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = *dataDir
	cfg.UnsafeNoFsync = *unsafeNoFsync
	cfg.QuotaBackendBytes = *quota
	cfg.Logger = "zap"
	cfg.LogLevel = *logLevel
	cfg.LogOutputs = []string{"stderr"}
	var err error
	for _, u := range []struct {
		dst *[]url.URL
		src string
	}{
		{&cfg.ListenClientUrls, *listenClient},
		{&cfg.AdvertiseClientUrls, *advertiseClient},
		{&cfg.ListenPeerUrls, *listenPeer},
		{&cfg.AdvertisePeerUrls, *advertisePeer},
	} {
		if *u.dst, err = parseURLs(u.src); err != nil {
			fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
			return 2
		}
	}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: start: %v\n", err)
		return 1
	}
	defer e.Close()

	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintf(os.Stderr, "etcd: ready, serving clients on %s\n", *listenClient)
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		fmt.Fprintln(os.Stderr, "etcd: not ready after 60s")
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	select {
	case <-ctx.Done():
		fmt.Fprintln(os.Stderr, "etcd: signal received, stopping")
		return 0
	case err := <-e.Err():
		fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
		return 1
	case <-e.Server.StopNotify():
		fmt.Fprintln(os.Stderr, "etcd: server stopped")
		return 1
	}
}

func parseURLs(s string) ([]url.URL, error) {
	var out []url.URL
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		u, err := url.Parse(part)
		if err != nil {
			return nil, fmt.Errorf("bad URL %q: %w", part, err)
		}
		out = append(out, *u)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no URL in %q", s)
	}
	return out, nil
}
