/*
 * The test bed's pod sandbox ("pause") process: it holds the pod's namespaces and does
 * nothing else. As PID 1 of a pod that shares its process namespace it reaps the orphans
 * that are given to it; SIGINT and SIGTERM end it (exit 0), as the kubelet's pause does.
 * Linked statically, so its image needs no files but this one.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

static int on(int sig, void (*handler)(int), int flags) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
        puts("pgml-testbed-pause 1");
        return 0;
    }
    if (on(SIGINT, stop, 0) < 0 || on(SIGTERM, stop, 0) < 0 ||
        on(SIGCHLD, reap, SA_NOCLDSTOP | SA_RESTART) < 0) {
        perror("sigaction");
        return 1;
    }
    for (;;) {
        pause();
    }
}
