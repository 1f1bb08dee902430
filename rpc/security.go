package rpc

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/corral-dev/corral/rpc/tlsutil"
)

// joinTokenKey is the gRPC metadata key that carries the join token.
const joinTokenKey = "corral-join-token"

// Security is what protects corral's gRPC connections between agents and
// servers: mutual TLS with role-bearing certificates, and the join token
// that an agent must present to the Server service. The zero value is
// plaintext without a token (single-node dev clusters).
type Security struct {
	// TLS, when set, makes every listener require a client certificate
	// signed by the cluster CA and every dialer present one.
	TLS *tlsutil.Config
	// JoinToken, when set, must accompany every call to the Server service
	// (agents, and servers forwarding for agents); dialers send it.
	JoinToken string
}

// Enabled reports whether any protection is configured.
func (s *Security) Enabled() bool { return s != nil && (s.TLS != nil || s.JoinToken != "") }

// ServerTLS is the listener side of mutual TLS accepting peers of the given
// roles, nil without TLS (for connections that are not gRPC: raft). It
// always requires a client certificate.
func (s *Security) ServerTLS(accept ...tlsutil.Role) *tls.Config {
	if s == nil || s.TLS == nil {
		return nil
	}
	return s.TLS.StrictServerConfig(accept...)
}

// ClientTLS is the dialer side of mutual TLS towards a node of role peer,
// nil without TLS.
func (s *Security) ClientTLS(peer tlsutil.Role) *tls.Config {
	if s == nil || s.TLS == nil {
		return nil
	}
	return s.TLS.ClientConfig(peer)
}

// DialOptions are the options of a connection to a node of role peer.
func (s *Security) DialOptions(peer tlsutil.Role) []grpc.DialOption {
	creds, secure := insecure.NewCredentials(), false
	if conf := s.ClientTLS(peer); conf != nil {
		creds, secure = credentials.NewTLS(conf), true
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if s != nil && s.JoinToken != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(tokenCreds{token: s.JoinToken, secure: secure}))
	}
	return opts
}

// ServerOptions are the options of a gRPC server that accepts peers of the
// given roles; they include ServerOptions().
func (s *Security) ServerOptions(accept ...tlsutil.Role) []grpc.ServerOption {
	opts := ServerOptions()
	if s == nil {
		return opts
	}
	if s.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.TLS.ServerConfig(accept...))),
			grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				if err := s.checkPeer(ctx, info.FullMethod); err != nil {
					return nil, err
				}
				return h(ctx, req)
			}),
			grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
				if err := s.checkPeer(ss.Context(), info.FullMethod); err != nil {
					return err
				}
				return h(srv, ss)
			}))
	}
	if s.JoinToken != "" {
		opts = append(opts,
			grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				if err := s.checkToken(ctx, info.FullMethod); err != nil {
					return nil, err
				}
				return h(ctx, req)
			}),
			grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
				if err := s.checkToken(ss.Context(), info.FullMethod); err != nil {
					return err
				}
				return h(srv, ss)
			}))
	}
	return opts
}

// checkPeer is the per-call half of mutual TLS: every call but SignAgent
// needs a verified client certificate (a listener with
// tlsutil.Config.OptionalClientCert lets clients without one through the
// handshake, for SignAgent only); the Agent service takes servers only,
// the Server service agents and servers; a certificate revoked since the
// handshake is refused at its next call.
func (s *Security) checkPeer(ctx context.Context, method string) error {
	cert := PeerCert(ctx)
	if cert == nil {
		if method == SignAgentMethod || method == JoinServerMethod {
			return nil
		}
		return status.Error(codes.Unauthenticated, "no client certificate: this port accepts only corral nodes with a certificate of the cluster CA (agents get one with -join-token)")
	}
	role, _ := tlsutil.RoleOf(cert)
	switch {
	case strings.HasPrefix(method, "/"+agentServiceName+"/") && role != tlsutil.RoleServer:
		return status.Errorf(codes.PermissionDenied, "the agent service takes calls from servers only, not from a %s certificate", role)
	case strings.HasPrefix(method, "/"+serverServiceName+"/") && role != tlsutil.RoleServer && role != tlsutil.RoleAgent:
		return status.Error(codes.PermissionDenied, "the server service takes calls from agents and servers only")
	}
	if s.TLS.Revoked != nil && s.TLS.Revoked(cert) {
		return status.Errorf(codes.PermissionDenied, "certificate %s has been revoked (corral node revoke): this node is cut off from the cluster", cert.SerialNumber.Text(16))
	}
	return nil
}

// PeerCert is the verified client certificate of a call over TLS, nil
// without one.
func PeerCert(ctx context.Context) *x509.Certificate {
	p, found := peer.FromContext(ctx)
	if !found {
		return nil
	}
	info, isTLS := p.AuthInfo.(credentials.TLSInfo)
	if !isTLS || len(info.State.VerifiedChains) == 0 || len(info.State.PeerCertificates) == 0 {
		return nil
	}
	return info.State.PeerCertificates[0]
}

// PeerAgentID is the agent ID a caller's certificate is bound to ("" for
// certificates without one: servers, role-only or node-only agents).
func PeerAgentID(ctx context.Context) string {
	cert := PeerCert(ctx)
	if cert == nil {
		return ""
	}
	if role, _ := tlsutil.RoleOf(cert); role != tlsutil.RoleAgent {
		return ""
	}
	return tlsutil.IDOf(cert)
}

// checkToken guards the Server service: only callers with the join token
// may register an agent, watch its kernels or report on them.
func (s *Security) checkToken(ctx context.Context, method string) error {
	if !strings.HasPrefix(method, "/"+serverServiceName+"/") {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	got := md.Get(joinTokenKey)
	if len(got) == 0 || got[0] == "" {
		return status.Error(codes.Unauthenticated, "no join token: start the agent with -join-token (the one the servers were given)")
	}
	if subtle.ConstantTimeCompare([]byte(got[0]), []byte(s.JoinToken)) != 1 {
		return status.Error(codes.PermissionDenied, "wrong join token: the agent's -join-token differs from the servers'")
	}
	return nil
}

// tokenCreds sends the join token with every call.
type tokenCreds struct {
	token  string
	secure bool
}

func (t tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{joinTokenKey: t.token}, nil
}

func (t tokenCreds) RequireTransportSecurity() bool { return t.secure }

// PeerAgent reports, for a call over mutual TLS, whether the caller holds
// an agent certificate and which node name it is bound to ("" when it is
// bound to the role only). Callers with a server certificate (forwarding
// for an agent, which they checked) and plaintext calls give ok=false.
func PeerAgent(ctx context.Context) (node string, ok bool) {
	p, found := peer.FromContext(ctx)
	if !found {
		return "", false
	}
	info, isTLS := p.AuthInfo.(credentials.TLSInfo)
	if !isTLS || len(info.State.PeerCertificates) == 0 {
		return "", false
	}
	cert := info.State.PeerCertificates[0]
	if role, _ := tlsutil.RoleOf(cert); role != tlsutil.RoleAgent {
		return "", false
	}
	return tlsutil.NodeOf(cert), true
}
