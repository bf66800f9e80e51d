"""openstacksdk's image proxy against `ims serve`: create (with data), get, update, download
(checked against the file's MD5 and SHA-512), delete. Arguments: URL TOKEN FILE. Prints one
line per step; exits non-zero on the first failure."""

import hashlib
import sys

import openstack

url, token, path = sys.argv[1], sys.argv[2], sys.argv[3]
conn = openstack.connection.Connection(
    auth_type="admin_token",
    auth={"endpoint": url + "/v2", "token": token},
    region_name="local",
)
data = open(path, "rb").read()

image = conn.image.create_image(
    name="sdk-image", filename=path, disk_format="qcow2", container_format="bare",
    wait=True, allow_duplicates=True,
)
print("created", image.id)

got = conn.image.get_image(image.id)
assert got.status == "active", got.status
assert got.checksum == hashlib.md5(data).hexdigest(), got.checksum
assert got.hash_algo == "sha512", got.hash_algo
assert got.hash_value == hashlib.sha512(data).hexdigest()
assert got.size == len(data), got.size
print("got", got.name, got.size)

conn.image.update_image(image, name="sdk-renamed", hw_disk_bus="virtio")
got = conn.image.get_image(image.id)
assert got.name == "sdk-renamed", got.name
assert got.hw_disk_bus == "virtio", got
print("updated", got.name)

body = conn.image.download_image(image)
content = body.content if hasattr(body, "content") else body
assert hashlib.sha512(content).hexdigest() == hashlib.sha512(data).hexdigest()
print("downloaded", len(content))

names = [i.name for i in conn.image.images()]
assert "sdk-renamed" in names, names

conn.image.delete_image(image)
assert conn.image.find_image(image.id) is None
print("deleted")
