// A cut-down k8s.io/kubernetes/test/utils/image/manifest.go.
package image

var (
	initRegistry = RegistryList{
		PromoterE2eRegistry: "registry.k8s.io/e2e-test-images",
		GcRegistry:          "registry.k8s.io",
	}
)

func initImageConfigs(list RegistryList) (map[ImageID]Config, map[ImageID]Config) {
	configs := map[ImageID]Config{}
	configs[Agnhost] = Config{list.PromoterE2eRegistry, "agnhost", "2.63.0"}
	configs[BusyBox] = Config{list.PromoterE2eRegistry, "busybox", "1.37.0-1"}
	configs[Pause] = Config{list.GcRegistry, "pause", "3.10.2"}
	configs[Nginx] = Config{list.PromoterE2eRegistry, "nginx", "1.15-4"}
	return configs, configs
}
