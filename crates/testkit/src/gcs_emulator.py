# gcp-storage-emulator, started with one addition: object downloads carry the Last-Modified
# and ETag headers that Google Cloud Storage itself always sends (the emulator omits them,
# and clients such as the object_store crate require them).
import sys
from datetime import datetime
from email.utils import format_datetime

from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:
        return
    updated = datetime.strptime(obj["updated"], "%Y-%m-%dT%H:%M:%S.%fZ")
    response["Last-Modified"] = format_datetime(updated.replace(tzinfo=None), usegmt=False).replace("-0000", "GMT")
    response["ETag"] = '"{}"'.format(obj.get("etag") or obj.get("md5Hash") or "0")


objects.download = download

from gcp_storage_emulator.__main__ import main  # noqa: E402

main(sys.argv[1:])
