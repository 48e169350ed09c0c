# The test bed's pod sandbox image (containerd's sandbox_image, as registry.k8s.io/pause is
# elsewhere): one static program, pause.c beside this file. The build context is a folder
# holding `pause`, compiled on the host (scripts/images.sh: cc -static -Os -s pause.c).
FROM scratch
COPY --chmod=0755 pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
LABEL org.opencontainers.image.title="pause" \
      org.opencontainers.image.description="pgml-operator's test bed: the pod sandbox process" \
      org.opencontainers.image.source="https://github.com/pgml-operator/pgml-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
