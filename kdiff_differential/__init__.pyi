# The public names, each from the one module that defines it: read by type checkers and
# by lazy_loader, which loads each module on first use (see __init__.py).
from .choices import CLOCKS, RELEASES, SCHEDULES
from .core.denoiser import DifferentialDenoiser
from .core.guidance import CFGDenoiser
from .core.samplers import SAMPLERS
from .core.sampling import SamplerRun, differential_edit
from .core.schedules import make_sigmas
from .editing.pipeline import Editor, ImageEdit, VideoEdit, edit_image, edit_video
from .editing.settings import EditSettings
from .errors import EditWarning, InputError
from .files.video import read_map_video, read_video, write_frames, write_video
from .maps.change_map import ChangeMap
from .maps.latent import latent_map
from .maps.shaping import shape_map
from .models import ImageModel, Model, find_model, load_model, load_pipeline, open_model
from .models.clipseg import prompt_map
from .models.controlnets import Control
from .models.flow import FlowDenoiser
from .quiet import quiet_warnings
from .stages.color_matching import match_colors
from .stages.compositing import composite
from .stages.cropping import plan_crop
from .stages.fills import fill_pixels

__version__: str
