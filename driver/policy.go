package driver

import (
	"strings"

	"github.com/bmatcuk/doublestar/v4"

	"github.com/hearth-ci/hearth/config"
	"github.com/hearth-ci/hearth/executor"
)

// chooseEnvironment applies the image policy to the image the job payload names: no image means
// the default environment; a configured environment's name picks it; an image reference matched
// by allowed_images runs that image. Anything else is refused, with what is allowed.
func chooseEnvironment(cfg *config.Config, image string) (executor.Environment, error) {
	if image == "" {
		image = cfg.Jobs.DefaultEnvironment
	}
	if env, ok := cfg.Environments[image]; ok {
		mounts, err := env.ParsedMounts()
		if err != nil {
			return executor.Environment{}, err
		}
		return executor.Environment{Name: image, StorePath: env.StorePath, Image: env.Image, Mounts: mounts}, nil
	}
	full, err := executor.NormalizeImage(image)
	if err == nil {
		for _, g := range cfg.Jobs.AllowedImages {
			if ok, _ := doublestar.Match(g, image); ok {
				return executor.Environment{Name: image, Image: image, Untrusted: true}, nil
			}
			if ok, _ := doublestar.Match(g, full); ok {
				return executor.Environment{Name: image, Image: image, Untrusted: true}, nil
			}
		}
	}
	allowed := "environments: " + strings.Join(cfg.EnvironmentNames(), ", ")
	if len(cfg.Jobs.AllowedImages) > 0 {
		allowed += "; images matching: " + strings.Join(cfg.Jobs.AllowedImages, ", ")
	} else {
		allowed += "; no other images are allowed"
	}
	return executor.Environment{}, buildFailure("image %q is not allowed on this runner. Set image: to one of the %s", image, allowed)
}
