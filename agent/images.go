package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/images"
	"github.com/corral-dev/corral/plugins/drivers"
	"github.com/corral-dev/corral/rpc"
	"github.com/corral-dev/corral/structs"
)

// pullReportInterval bounds how often pull progress is reported to the
// servers (each report is a raft write, and a line of `create -wait`).
const pullReportInterval = 2 * time.Second

// pullThrottle passes a kernel's pull progress on at most once per
// pullReportInterval; the first report waits an interval too (the start
// and the end of a pull are reported apart).
type pullThrottle struct{ last time.Time }

// due says whether progress at now (done of total bytes) is reported.
func (t *pullThrottle) due(now time.Time, done, total int64) bool {
	if t.last.IsZero() {
		t.last = now
		return false
	}
	if done >= total || now.Sub(t.last) < pullReportInterval {
		return false
	}
	t.last = now
	return true
}

// pullImage pulls the kernel's image (PULLING with bytes done/total as
// status info) and returns the rootfs and run config for the driver.
func (r *kernelRunner) pullImage(ctx context.Context, cfg *drivers.TaskConfig) error {
	ref := r.kernel.Image
	rep := r.a.reporter
	rep.report(r.id, structs.KernelPulling, "pulling image "+ref, nil)
	var throttle pullThrottle
	img, err := r.a.pull(ctx, ref, func(p images.Progress) {
		if throttle.due(time.Now(), p.BytesDone, p.BytesTotal) {
			rep.report(r.id, structs.KernelPulling, fmt.Sprintf("pulling image %s: %s / %s (layer %d of %d)",
				ref, structs.FormatBytes(structs.Whole(p.BytesDone)), structs.FormatBytes(structs.Whole(p.BytesTotal)), p.Layer, p.Layers), nil)
		}
	})
	if err != nil {
		return err
	}
	cfg.RootFS = img.RootFS
	cfg.ImageConfig = &drivers.ImageConfig{
		Entrypoint: img.Config.Entrypoint, Cmd: img.Config.Cmd, Env: img.Config.Env,
		WorkingDir: img.Config.WorkingDir, User: img.Config.User,
	}
	ports, err := structs.ImageServicePorts(img.Config.Labels)
	if err != nil {
		r.a.logger.Warn("image declares service ports the agent cannot use", "kernel_id", r.id, "image", ref, "error", err)
	}
	r.imagePorts = ports
	if r.kernel.WorkDir == "" {
		cfg.WorkDir = "" // inside the container: the image's working dir
	}
	rep.report(r.id, structs.KernelPulling, fmt.Sprintf("pulled image %s (%s, %s)", ref, img.Digest, structs.FormatBytes(structs.Whole(img.Size))), nil)
	return nil
}

func imageInfo(img *images.Image) *rpc.ImageInfo {
	return &rpc.ImageInfo{Ref: img.Ref, Digest: img.Digest, Size: img.Size, UnpackedSize: img.UnpackedSize, PulledAt: img.PulledAt}
}

// ImageList lists the agent's cached images.
func (s *agentService) ImageList(ctx context.Context, req *rpc.ImageListRequest) (*rpc.ImageListResponse, error) {
	imgs, err := s.a.images.List()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	out := &rpc.ImageListResponse{Images: []*rpc.ImageInfo{}}
	for _, img := range imgs {
		out.Images = append(out.Images, imageInfo(img))
	}
	return out, nil
}

// ImageRemove removes an image from the agent's cache, refused while a
// kernel of this agent that has not ended uses it (by reference or by
// digest). The check and the removal hold the agent's lock, under which
// new kernels are registered: a kernel assigned after the removal pulls
// the image again.
func (s *agentService) ImageRemove(ctx context.Context, req *rpc.ImageRemoveRequest) (*rpc.ImageRemoveResponse, error) {
	img, err := s.a.images.Get(req.Ref)
	switch {
	case errors.Is(err, images.ErrImageNotFound):
		return nil, status.Error(codes.NotFound, err.Error())
	case err != nil:
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	a := s.a
	a.mu.Lock()
	defer a.mu.Unlock()
	var users []string
	for _, r := range a.kernels {
		if r.isDone() || r.kernel.Image == "" {
			continue
		}
		uses := r.kernel.Image == req.Ref || r.kernel.Image == img.Ref
		if !uses {
			if ki, err := a.images.Get(r.kernel.Image); err == nil && ki.Digest == img.Digest {
				uses = true
			}
		}
		if uses {
			users = append(users, fmt.Sprintf("kernel %s of session %s", r.id, r.kernel.SessionID))
		}
	}
	if len(users) > 0 {
		slices.Sort(users)
		return nil, status.Errorf(codes.FailedPrecondition, "image %s is in use by %s: destroy those sessions first, or wait for them to end", img.Ref, strings.Join(users, ", "))
	}
	if err := a.images.Remove(req.Ref); err != nil {
		if errors.Is(err, images.ErrImageNotFound) {
			return nil, status.Error(codes.NotFound, err.Error())
		}
		return nil, status.Error(codes.Internal, err.Error())
	}
	a.logger.Info("removed image", "ref", img.Ref, "digest", img.Digest)
	return &rpc.ImageRemoveResponse{Image: imageInfo(img)}, nil
}

// ImagePull pulls an image into the agent's cache.
func (s *agentService) ImagePull(ctx context.Context, req *rpc.ImagePullRequest) (*rpc.ImagePullResponse, error) {
	img, err := s.a.pull(ctx, req.Ref, nil)
	switch {
	case err == nil:
		return &rpc.ImagePullResponse{Image: imageInfo(img)}, nil
	case errors.Is(err, images.ErrInvalidReference):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, images.ErrImageNotFound):
		return nil, status.Error(codes.NotFound, err.Error())
	case errors.Is(err, images.ErrRegistryUnreachable):
		return nil, status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, images.ErrRegistryNotAllowed):
		return nil, status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, images.ErrImageTooLarge):
		return nil, status.Error(codes.ResourceExhausted, err.Error())
	}
	return nil, status.Error(codes.Internal, err.Error())
}
