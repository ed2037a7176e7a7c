"""ament_python package vl_attention (the repository root is the package root)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'vl_attention'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=[PACKAGE, f'{PACKAGE}.*']) + [
        f'{PACKAGE}.training', f'{PACKAGE}.training.sources'],
    package_dir={f'{PACKAGE}.training': 'training',
                 f'{PACKAGE}.training.sources': 'training/sources'},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.launch.py')),
        (f'share/{PACKAGE}/config', glob('config/*.yaml')),
        (f'share/{PACKAGE}/config/models', glob('config/models/*.yaml')),
        (f'share/{PACKAGE}/config/training', glob('config/training/*.yaml')),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='vl_attention maintainers',
    maintainer_email='maintainers@vl-attention.invalid',
    description='Long-term visual localization with attention-based global descriptors',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'localize_node = vl_attention.ros.node:main',
            'vl-attention = vl_attention.cli:main',
        ],
    },
)
