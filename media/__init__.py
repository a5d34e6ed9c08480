"""What tenants send that the service must fetch or decode: image URLs, fetched under an address policy
(`media.fetch`), and images, checked from their header before anything decodes them (`media.images`).

A leaf package: it imports nothing of the project, so the API, the worker and the chat proxy share one policy.
"""

from media.fetch import AddressPolicy, FetchError, fetch
from media.images import DATA_URL, ImageInfo, ImageRejected, decode_data_url, inspect_image

__all__ = ["DATA_URL", "AddressPolicy", "FetchError", "ImageInfo", "ImageRejected", "decode_data_url", "fetch",
           "inspect_image"]
