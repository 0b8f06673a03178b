// Package s3 is the binary-cache backend on an S3 bucket, made to work with Backblaze B2: an
// explicit region and endpoint, path-style addressing, no flexible-checksum headers (B2 rejects
// them, also on multipart uploads), multipart uploads with bounded memory for large NARs, and
// retries with backoff on 5xx responses and timeouts (B2 answers 500/503 by design when busy).
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"golang.org/x/sync/errgroup"

	"github.com/hearth-ci/hearth/cache/binarycache"
	"github.com/hearth-ci/hearth/nix/signing"
	"github.com/hearth-ci/hearth/secretfile"
)

// Config says which bucket, and how to reach it.
type Config struct {
	Bucket, Region, Endpoint, Prefix string
	// AccessKeyIDFile and SecretAccessKeyFile hold the credentials.
	AccessKeyIDFile, SecretAccessKeyFile string
	// PartSize is the multipart part size (default 8 MiB; B2 and S3 need at least 5 MiB);
	// PartsInFlight how many parts of one upload are sent at once (default 2). One upload holds
	// at most (PartsInFlight+1) parts in memory.
	PartSize      int64
	PartsInFlight int
	// MaxAttempts bounds the tries of each request (default 6).
	MaxAttempts int
}

// Bucket is an S3 bucket as binarycache.Objects.
type Bucket struct {
	client        *s3.Client
	bucket        string
	prefix        string
	endpoint      string
	partSize      int64
	partsInFlight int
	buffers       sync.Pool
}

// New returns the cache in the bucket, signing with key when it is not nil. It checks that the
// bucket exists and the credentials may use it.
func New(ctx context.Context, cfg Config, key *signing.SecretKey) (*binarycache.Cache, error) {
	b, err := Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return binarycache.New(b, key), nil
}

// Open connects to the bucket.
func Open(ctx context.Context, cfg Config) (*Bucket, error) {
	id, err := secretfile.Read(cfg.AccessKeyIDFile, "the S3 access key id ([cache.s3] access_key_id_file)")
	if err != nil {
		return nil, err
	}
	secret, err := secretfile.Read(cfg.SecretAccessKeyFile, "the S3 secret access key ([cache.s3] secret_access_key_file)")
	if err != nil {
		return nil, err
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = 8 << 20
	}
	if cfg.PartsInFlight == 0 {
		cfg.PartsInFlight = 2
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = 6
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	// A connection not made in 10 s will not be made; the retryer tries again. B2 answers a part
	// upload only once it has stored the part, which can take a minute when it is busy.
	transport.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	transport.ResponseHeaderTimeout = 2 * time.Minute
	transport.MaxIdleConnsPerHost = 64
	opts := s3.Options{
		Region:      cfg.Region,
		Credentials: aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider(id, secret, "")),
		HTTPClient:  &http.Client{Transport: transport},
		// B2 refuses x-amz-checksum-* and x-amz-sdk-checksum-algorithm headers: send checksums
		// only where the S3 API requires them, and do not ask for them on reads.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
		Retryer: retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = cfg.MaxAttempts
			o.MaxBackoff = 20 * time.Second // B2 asks clients busy-signalled with 503 to back off for seconds, not minutes
		}),
	}
	endpoint := "https://s3." + cfg.Region + ".amazonaws.com"
	if cfg.Endpoint != "" {
		opts.BaseEndpoint = aws.String(cfg.Endpoint)
		opts.UsePathStyle = true
		endpoint = cfg.Endpoint
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	b := &Bucket{client: s3.New(opts), bucket: cfg.Bucket, prefix: prefix, endpoint: endpoint, partSize: cfg.PartSize, partsInFlight: cfg.PartsInFlight}
	b.buffers.New = func() any { return make([]byte, b.partSize) }
	if _, err := b.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &b.bucket}); err != nil {
		return nil, b.explain("open bucket", err)
	}
	return b, nil
}

func (b *Bucket) String() string { return "s3://" + b.bucket + "/" + b.prefix + " at " + b.endpoint }

// explain turns an S3 error into a sentence that says what is wrong.
func (b *Bucket) explain(what string, err error) error {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		switch re.HTTPStatusCode() {
		case http.StatusNotFound:
			var nb *types.NoSuchBucket
			if errors.As(err, &nb) || what == "open bucket" {
				return fmt.Errorf("%s: bucket %q does not exist at %s: create it, or fix [cache.s3] bucket", what, b.bucket, b.endpoint)
			}
		case http.StatusForbidden:
			return fmt.Errorf("%s: %s refused the credentials for bucket %q (403): check [cache.s3] access_key_id_file and secret_access_key_file, and that the key may use this bucket: %w", what, b.endpoint, b.bucket, err)
		case http.StatusBadRequest:
			return fmt.Errorf("%s: %s rejected the request (400; a wrong region is a common cause, [cache.s3] region): %w", what, b.endpoint, err)
		}
	}
	return fmt.Errorf("%s: %w", what, err)
}

func notFound(err error) bool {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound {
		return true
	}
	var nk *types.NoSuchKey
	var nf *types.NotFound
	return errors.As(err, &nk) || errors.As(err, &nf)
}

// Exists asks for key's metadata.
func (b *Bucket) Exists(ctx context.Context, key string) (bool, error) {
	_, err := b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &b.bucket, Key: aws.String(b.prefix + key)})
	if err == nil {
		return true, nil
	}
	if notFound(err) {
		return false, nil
	}
	return false, b.explain("look up "+key, err)
}

// Get opens key.
func (b *Bucket) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	out, err := b.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &b.bucket, Key: aws.String(b.prefix + key)})
	if err != nil {
		if notFound(err) {
			return nil, fmt.Errorf("%s: %w", key, binarycache.ErrNotExist)
		}
		return nil, b.explain("get "+key, err)
	}
	return out.Body, nil
}

// ListInfo returns the objects directly under prefix+dir whose keys end in suffix.
func (b *Bucket) ListInfo(ctx context.Context, dir, suffix string) ([]binarycache.ObjectInfo, error) {
	var out []binarycache.ObjectInfo
	p := s3.NewListObjectsV2Paginator(b.client, &s3.ListObjectsV2Input{Bucket: &b.bucket, Prefix: aws.String(b.prefix + dir), Delimiter: aws.String("/")})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, b.explain("list", err)
		}
		for _, o := range page.Contents {
			k := strings.TrimPrefix(aws.ToString(o.Key), b.prefix)
			if strings.HasSuffix(k, suffix) {
				out = append(out, binarycache.ObjectInfo{Key: k, Size: aws.ToInt64(o.Size), Modified: aws.ToTime(o.LastModified)})
			}
		}
	}
	return out, nil
}

// Delete removes key.
func (b *Bucket) Delete(ctx context.Context, key string) error {
	if _, err := b.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &b.bucket, Key: aws.String(b.prefix + key)}); err != nil && !notFound(err) {
		return b.explain("delete "+key, err)
	}
	return nil
}

// Put uploads what r yields. Up to one part it is a single PutObject; beyond, a multipart upload
// whose parts are read while earlier ones are sent, at most PartsInFlight at once, and which is
// aborted — leaving nothing — when r or any part fails.
func (b *Bucket) Put(ctx context.Context, key string, r io.Reader, contentType string) error {
	full := b.prefix + key
	first := b.buffers.Get().([]byte)
	n, err := io.ReadFull(r, first)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		defer b.buffers.Put(first)
		_, err := b.client.PutObject(ctx, &s3.PutObjectInput{
			Bucket: &b.bucket, Key: &full, Body: bytes.NewReader(first[:n]),
			ContentLength: aws.Int64(int64(n)), ContentType: &contentType,
		})
		if err != nil {
			return b.explain("upload "+key, err)
		}
		return nil
	}
	if err != nil {
		b.buffers.Put(first)
		return err
	}
	return b.multipart(ctx, full, key, first, r, contentType)
}

func (b *Bucket) multipart(ctx context.Context, full, key string, first []byte, r io.Reader, contentType string) (err error) {
	created, err := b.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &b.bucket, Key: &full, ContentType: &contentType})
	if err != nil {
		b.buffers.Put(first)
		return b.explain("start upload of "+key, err)
	}
	defer func() {
		if err != nil {
			// Without this the bucket keeps the parts (and bills for them) until a lifecycle rule
			// removes them.
			// Not the push's context, which may be why the upload stopped; a minute, as for any
			// one request.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			_, _ = b.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{Bucket: &b.bucket, Key: &full, UploadId: created.UploadId})
		}
	}()
	var (
		mu    sync.Mutex
		parts []types.CompletedPart
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(b.partsInFlight)
	buf, n := first, len(first)
	for num := int32(1); ; num++ {
		if num > 10000 {
			b.buffers.Put(buf)
			_ = g.Wait()
			return fmt.Errorf("upload %s: more than 10000 parts of %d bytes", key, b.partSize)
		}
		part, data := num, buf
		size := n
		g.Go(func() error {
			defer b.buffers.Put(data)
			out, err := b.client.UploadPart(gctx, &s3.UploadPartInput{
				Bucket: &b.bucket, Key: &full, UploadId: created.UploadId, PartNumber: &part,
				Body: bytes.NewReader(data[:size]), ContentLength: aws.Int64(int64(size)),
			})
			if err != nil {
				return b.explain(fmt.Sprintf("upload part %d of %s", part, key), err)
			}
			mu.Lock()
			parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: &part})
			mu.Unlock()
			return nil
		})
		buf = b.buffers.Get().([]byte)
		n, err = io.ReadFull(r, buf)
		if err == io.EOF {
			b.buffers.Put(buf)
			break
		}
		if err == io.ErrUnexpectedEOF {
			continue // this short part is the last: send it on the next round, then stop
		}
		if err != nil {
			b.buffers.Put(buf)
			_ = g.Wait()
			return err
		}
		if gctx.Err() != nil {
			// A part failed, or the push was cancelled: either way the upload does not complete.
			b.buffers.Put(buf)
			if err := g.Wait(); err != nil {
				return err
			}
			return gctx.Err()
		}
	}
	if err := g.Wait(); err != nil {
		return err
	}
	sort.Slice(parts, func(i, j int) bool { return *parts[i].PartNumber < *parts[j].PartNumber })
	_, err = b.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: &b.bucket, Key: &full, UploadId: created.UploadId,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	if err != nil {
		return b.explain("finish upload of "+key, err)
	}
	return nil
}
